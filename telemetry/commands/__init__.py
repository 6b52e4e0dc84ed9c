"""The ``wft`` subcommands, one module each: (name, help, configure)."""

from __future__ import annotations

from . import export, follow, runs, sentry, serve, trace_id

COMMANDS = [
    ("serve", "run the collector: OTLP receiver, store, world tailer and run API", serve.configure),
    ("runs", "list a world's runs (like `workflow inspect runs`)", runs.configure),
    ("export", "backfill every run of a world to an OTLP collector as traces", export.configure),
    ("sentry", "Sentry noise rules: dry-run them on your own events, or list them", sentry.configure),
    ("trace-id", "print the trace id of a run's event-log trace (when the app stored no traceparent)", trace_id.configure),
    ("follow", "tail a world and export spans as steps finish (resumes from a checkpoint)", follow.configure),
]

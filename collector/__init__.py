"""The collector service: OTLP receiver, store, world tailer, Sentry relay and web UI (see README)."""

"""The public names the foundation issue promises, imported exactly as written there."""


def test_public_names_import_as_documented():
    from telemetry.backends import backend_config, open_backend
    from telemetry.backends.local import LocalWorld
    from telemetry.backends.postgres import PostgresWorld
    from telemetry.errors import (
        EntityConflictError,
        HookNotFoundError,
        PreconditionFailedError,
        RunExpiredError,
        StreamError,
        ThrottleError,
        TooEarlyError,
        WorkflowRunNotFoundError,
        WorkflowWorldError,
        error_for_response,
        parse_retry_after,
    )
    from telemetry.export import OtlpSink
    from telemetry.runtrace import build_run_trace
    from telemetry.streams import StreamWriter
    from telemetry.tracing import benign_counts, is_benign_conflict, record_benign, throw_with_trace
    from telemetry.world import World, traced

    assert issubclass(EntityConflictError, WorkflowWorldError)
    errors = (HookNotFoundError, PreconditionFailedError, RunExpiredError, StreamError, ThrottleError, TooEarlyError)
    assert all(issubclass(e, Exception) for e in (*errors, WorkflowRunNotFoundError))
    functions = (backend_config, open_backend, error_for_response, parse_retry_after, build_run_trace, traced)
    functions += (benign_counts, is_benign_conflict, record_benign, throw_with_trace)
    assert all(callable(f) for f in functions)
    assert all(isinstance(c, type) for c in (LocalWorld, PostgresWorld, OtlpSink, StreamWriter, World))


def test_concrete_worlds_satisfy_the_protocol(tmp_path):
    from telemetry.backends.local import LocalWorld
    from telemetry.backends.postgres import PostgresWorld
    from telemetry.world import World

    (tmp_path / "runs").mkdir()
    assert isinstance(LocalWorld(tmp_path), World)
    assert isinstance(PostgresWorld("postgres://u:p@127.0.0.1:9/x"), World)

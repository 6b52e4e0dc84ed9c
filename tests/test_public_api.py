"""The public names the foundation issue promises, imported exactly as written there."""


def test_public_names_import_as_documented():
    from telemetry.backends import backend_config, open_backend  # noqa: F401
    from telemetry.backends.local import LocalWorld  # noqa: F401
    from telemetry.backends.postgres import PostgresWorld  # noqa: F401
    from telemetry.errors import (  # noqa: F401
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
    from telemetry.export import OtlpSink  # noqa: F401
    from telemetry.runtrace import build_run_trace  # noqa: F401
    from telemetry.streams import StreamWriter  # noqa: F401
    from telemetry.tracing import benign_counts, is_benign_conflict, record_benign, throw_with_trace  # noqa: F401
    from telemetry.world import World, traced  # noqa: F401

    assert issubclass(EntityConflictError, WorkflowWorldError)
    assert callable(traced) and callable(throw_with_trace)


def test_concrete_worlds_satisfy_the_protocol(tmp_path):
    from telemetry.backends.local import LocalWorld
    from telemetry.backends.postgres import PostgresWorld
    from telemetry.world import World

    (tmp_path / "runs").mkdir()
    assert isinstance(LocalWorld(tmp_path), World)
    assert isinstance(PostgresWorld("postgres://u:p@127.0.0.1:9/x"), World)

"""The service's settings, from flags and environment, checked before anything starts."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from telemetry.backends import BackendConfig

from .tls import RELOAD_INTERVAL_S, TlsFiles

__all__ = ["GRPC_PORT", "Settings", "SettingsError", "parse_bytes", "parse_duration", "parse_headers", "is_loopback"]


#: the port OTLP/gRPC receivers listen on (``wft serve --grpc-port``'s default)
GRPC_PORT: Final = 4317


class SettingsError(ValueError):
    """Bad configuration: one line, and the service does not start."""


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 4318
    grpc_port: int | None = None  # OTLP/gRPC on this port too (``--grpc-port``, 4317 from the command line); 0: any
    grpc_best_effort: bool = False  # a gRPC port that cannot be bound is a warning, not an error (the CLI's default)
    store: Path = Path("wft-data/store.sqlite3")
    token: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_pending_spans: int = 200_000
    max_pending_bytes: int = 256 * 1024 * 1024  # admission.DEFAULT_MAX_PENDING_BYTES
    retention_age_s: float | None = 7 * 24 * 3600
    retention_bytes: int | None = 1024**3
    world: BackendConfig | None = None  # None: no tailer
    tail_interval: float | None = None  # seconds between the tailer's polls; None: the world kind's (``poll_interval``)
    forward_otlp: str | None = None
    forward_headers: dict[str, str] = field(default_factory=dict)  # sent with each forwarded batch (an API key)
    relay: tuple[str, ...] = ()  # OTLP signals relayed to the forward upstream as they came (``--relay``)
    spool_dir: Path | None = None
    spool_max_bytes: int = 256 * 1024 * 1024
    forward_sample: dict[str, float] | None = None  # rates by run outcome (``--forward-sample``); None: all
    sample_max_wait: float = 3600.0  # an undecided run is forwarded after this long (``--sample-max-wait``)
    sample_buffer_bytes: int = 64 * 1024 * 1024  # bound of the undecided runs' buffer (``--sample-buffer``)
    sentry_upstream: str | None = None  # DSN of the Sentry the relay forwards to
    trace_url_template: str | None = None  # link from run pages to the user's Tempo/Jaeger: "…{trace_id}…"
    tls: TlsFiles | None = None  # serve both ports over TLS (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``)
    tls_reload_interval: float = RELOAD_INTERVAL_S  # seconds between looks for renewed TLS files

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise SettingsError(
                f"refusing to listen on {self.host} without a token: set --token or WFT_TOKEN (or bind 127.0.0.1)"
            )
        if self.token is not None and len(self.token) < 16:
            raise SettingsError("the token must be at least 16 characters")
        if self.max_pending_bytes < 1024 * 1024:
            raise SettingsError(
                f"--max-pending-bytes: {self.max_pending_bytes} bytes is too small to admit anything (at least 1MiB)"
            )
        if not 0 <= self.port < 65536:  # 0: any free port
            raise SettingsError(f"port {self.port} is out of range")
        if self.grpc_port is not None:
            if not 0 <= self.grpc_port < 65536:
                raise SettingsError(f"--grpc-port {self.grpc_port} is out of range")
            if self.grpc_port == self.port != 0:
                raise SettingsError(f"--grpc-port and --port are both {self.port}: OTLP/gRPC needs a port of its own")
        if self.trace_url_template is not None:
            from .queries import check_trace_url_template

            try:
                check_trace_url_template(self.trace_url_template)
            except ValueError as error:
                raise SettingsError(str(error)) from None
        if self.forward_otlp is not None:
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(self.forward_otlp)
                port_ok = parts.port != 0
            except ValueError:  # a port that is no number or out of range, a broken [IPv6] host
                parts, port_ok = urlsplit(""), False
            if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(
                    f"--forward-otlp: not an http:// or https:// URL: {self.forward_otlp!r}"
                    " (example: http://tempo:4318; /v1/traces is appended)"
                )
        if self.relay:
            from .otlp_relay import RELAYABLE

            if self.forward_otlp is None:
                raise SettingsError("--relay needs --forward-otlp: the signals go to its upstream")
            unknown = [name for name in self.relay if name not in RELAYABLE]
            if unknown:
                raise SettingsError(f"--relay: {', '.join(unknown)}: the signals relayed are {', '.join(RELAYABLE)}")
        if self.forward_headers and self.forward_otlp is None:
            raise SettingsError("--forward-headers needs --forward-otlp: they are sent with what is forwarded")
        if "authorization" in self.forward_headers and self.forward_otlp is not None:
            from urllib.parse import urlsplit

            if urlsplit(self.forward_otlp).username is not None:
                raise SettingsError(
                    "--forward-otlp has credentials in its URL and --forward-headers an authorization:"
                    " give one of the two"
                )
        if self.forward_sample is not None:
            from .sampling import OUTCOMES

            if self.forward_otlp is None:
                raise SettingsError("--forward-sample needs --forward-otlp: it samples what is forwarded")
            bad = {k: v for k, v in self.forward_sample.items() if k not in OUTCOMES or not 0.0 <= v <= 1.0}
            if bad:
                raise SettingsError(f"--forward-sample: rates must be {'/'.join(OUTCOMES)}=0..1, not {bad}")
        if not self.sample_max_wait > 0:
            raise SettingsError("--sample-max-wait must be longer than 0 s")
        if self.sentry_upstream:
            from .sentry_relay import upstream_base

            try:
                upstream_base(self.sentry_upstream)
            except ValueError as error:
                raise SettingsError(str(error)) from None


#: headers the HTTP client sets from the request itself: one given too would contradict it
_MANAGED_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "content-type",
        "expect",
        "te",
        "upgrade",
    }
)


def parse_headers(text: str, flag: str) -> dict[str, str]:
    """Headers as ``OTEL_EXPORTER_OTLP_HEADERS`` writes them (``name=value,name2=value2``, values
    percent-encoded), names lower-cased. ``SettingsError`` for an entry that is not one, naming it
    by its place only: an entry is usually a secret, and a mistyped one (a key pasted without its
    name) is all secret."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    entries = [entry for entry in text.split(",") if entry.strip()]
    for place, entry in enumerate(entries, 1):
        name, equals, value = entry.partition("=")
        where = f"{flag}: entry {place} of {len(entries)}"
        try:
            name = unquote(name, errors="strict").strip().lower()
            value = unquote(value, errors="strict").strip()
        except UnicodeDecodeError:
            raise SettingsError(f"{where}: a %-escape that is not UTF-8") from None
        # a value of "=" or none: most likely a base64 key pasted without its name
        if (
            not equals
            or value in ("", "=", "==")
            or len(name) > 64
            or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", name)
        ):
            raise SettingsError(f"{where} is not a header name=value (name=value,name2=value2, values %-encoded)")
        if name in out:
            raise SettingsError(f"{where}: {name} is given twice")
        if name in _MANAGED_HEADERS:
            raise SettingsError(f"{where}: {name} is set by the request itself, not by {flag}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise SettingsError(f"{where}: {name}'s value holds a control character")
        out[name] = value
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise SettingsError(f"not a size: {text!r} (examples: 16MiB, 1GiB, 500000)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value > _LARGEST:
        raise SettingsError(f"not a size: {text!r} is larger than any disk (examples: 16MiB, 1GiB, 500000)")
    return int(value)


#: sizes and durations past these are typing mistakes (and would overflow SQLite's integers)
_LARGEST = 2.0**62
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LONGEST = 1000 * 365 * 86400.0


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise SettingsError(f"not a duration: {text!r} (examples: 90s, 12h, 7d)")
    value = float(match.group(1)) * _SECONDS[match.group(2) or "s"]
    if not math.isfinite(value) or value > _LONGEST:
        raise SettingsError(f"not a duration: {text!r} is longer than 1000 years (examples: 90s, 12h, 7d)")
    return value

"""TLS on the collector's ports (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``).

Bound beyond loopback the collector needs a token, and without TLS that token (and every span,
every Sentry event) crosses the network in clear. The same files serve OTLP/HTTP (with the pages,
the API and the Sentry relay on that port) and OTLP/gRPC, so a client trusts one certificate.

Certificates are short-lived where they are issued automatically (ACME, cert-manager, Vault), and
a sidecar is left running for months: the files are looked at again every ``RELOAD_INTERVAL_S``
and, once they change and load as a pair, new connections get them (the open ones keep theirs).
A half-replaced pair (a new certificate beside the old key) is a warning, and the old pair serves
until the files agree. With ``--tls-client-ca`` every client must present a certificate that CA
signed (mutual TLS); a CA file that changes is added to the ones trusted, never removes one, so
rotating to a new CA is seamless and dropping an old one takes a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import grpc

__all__ = ["RELOAD_INTERVAL_S", "ServerTls", "TlsError", "TlsFiles", "environment_files"]

log = logging.getLogger("collector.tls")

#: how often the files are looked at for a renewed certificate (a stat of each, nothing read)
RELOAD_INTERVAL_S: Final = 30.0


class TlsError(ValueError):
    """The files cannot serve TLS; one line that names the file and why."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM: the server's certificate, then any intermediates
    key: Path  # PEM: its private key, unencrypted (the service starts unattended)
    client_ca: Path | None = None  # PEM: CA(s) whose certificates clients must present (mutual TLS)

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)


def _no_password() -> str:
    raise TlsError("encrypted")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsError(f"{flag} {path}: {error.strerror or error}") from None


def _load_pair(context: ssl.SSLContext, files: TlsFiles) -> None:
    """Load the certificate and key into ``context``: ``TlsError`` naming the file at fault."""
    for path, flag in ((files.cert, "--tls-cert"), (files.key, "--tls-key")):
        _read(path, flag)  # a missing or unreadable file, said as such (ssl says only "No such file")
    try:
        # a password callback that refuses: an encrypted key would otherwise prompt on the terminal
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except TlsError:
        raise TlsError(
            f"--tls-key {files.key}: the key is encrypted; the service starts unattended, so give it"
            " the key decrypted (openssl pkey -in KEY -out KEY.plain), readable only by its user"
        ) from None
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error) or error.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(f"--tls-key {files.key} is not the key of --tls-cert {files.cert}") from None
        raise TlsError(
            f"--tls-cert {files.cert} / --tls-key {files.key}: not a PEM certificate and its key"
            f" ({error.reason or error})"
        ) from None


def _load_client_ca(context: ssl.SSLContext, path: Path) -> None:
    _read(path, "--tls-client-ca")
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise TlsError(f"--tls-client-ca {path}: no PEM certificate in it ({error.reason or error})") from None


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """What says a file changed without reading it: (inode, size, mtime ns) of each; a file that
    cannot be looked at counts as changed (and is then reported by the reload)."""
    out = []
    for path in paths:
        try:
            s = path.stat()
            out.append((s.st_ino, s.st_size, s.st_mtime_ns))
        except OSError:
            out.append((0, -1, 0))
    return tuple(out)


class ServerTls:
    """The server side of TLS for both ports: an ``ssl.SSLContext`` for aiohttp, credentials for
    grpc that pick up a renewed pair, and ``watch`` to notice the renewal. ``TlsError`` on a pair
    that cannot serve (checked before anything listens)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = self._context()
        self.generation = 0  # bumped each time a changed pair is loaded
        self._stamp = _stamp(files.paths())
        self._warned: tuple[tuple[int, int, int], ...] | None = None
        self._key_mode_warning()

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_pair(context, self.files)
        if self.files.client_ca is not None:
            _load_client_ca(context, self.files.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _key_mode_warning(self) -> None:
        try:
            mode = self.files.key.stat().st_mode
        except OSError:
            return
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "--tls-key %s can be read by other users (mode %s): chmod 600 it",
                self.files.key,
                oct(stat.S_IMODE(mode)),
            )

    # -- renewal ------------------------------------------------------------------------------
    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since last loaded; True when a new pair now serves.
        A pair that does not load (half replaced, unreadable) is one warning and the old one serves."""
        now = _stamp(self.files.paths())
        if now == self._stamp:
            return False
        try:
            self._context()  # the new files, checked whole before the live context takes them
        except TlsError as error:
            if now != self._warned:
                log.warning("TLS files changed but cannot be loaded; the previous ones still serve: %s", error)
                self._warned = now
            return False
        _load_pair(self.context, self.files)
        if self.files.client_ca is not None:
            _load_client_ca(self.context, self.files.client_ca)
        self._stamp, self._warned = now, None
        self.generation += 1
        log.info("TLS: a renewed certificate from %s now serves new connections", self.files.cert)
        return True

    async def watch(self, stop: asyncio.Event, interval: float = RELOAD_INTERVAL_S) -> None:
        """Until ``stop``: every ``interval`` seconds, ``reload_if_changed`` (off the loop: it reads files)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                await asyncio.to_thread(self.reload_if_changed)

    # -- grpc ---------------------------------------------------------------------------------
    def grpc_credentials(self) -> grpc.ServerCredentials:
        """grpc's server credentials from the same files; grpc asks ``_fetch`` at each handshake
        and gets the new pair once ``generation`` moved (``None``: keep the one it has)."""
        import grpc

        served = self.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            if self.generation == served:
                return None
            try:
                config = self._grpc_configuration()
            except TlsError:  # replaced again since the reload: keep the last pair until the next one
                return None
            served = self.generation
            return config

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(), fetch, require_client_authentication=self.files.client_ca is not None
        )

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        import grpc

        pair = (_read(self.files.key, "--tls-key"), _read(self.files.cert, "--tls-cert"))
        ca = None if self.files.client_ca is None else _read(self.files.client_ca, "--tls-client-ca")
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def environment_files(cert: str | None, key: str | None, client_ca: str | None) -> TlsFiles | None:
    """``TlsFiles`` from the three flags (or their ``WFT_TLS_*`` variables): both of cert and key,
    or neither; a client CA only with them."""
    cert = cert or os.environ.get("WFT_TLS_CERT") or None
    key = key or os.environ.get("WFT_TLS_KEY") or None
    client_ca = client_ca or os.environ.get("WFT_TLS_CLIENT_CA") or None
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsError("--tls-client-ca needs --tls-cert and --tls-key: clients are checked over TLS")
        return None
    if cert is None or key is None:
        missing = "--tls-cert" if cert is None else "--tls-key"
        raise TlsError(f"TLS needs both --tls-cert and --tls-key: {missing} is missing")
    return TlsFiles(Path(cert), Path(key), None if client_ca is None else Path(client_ca))

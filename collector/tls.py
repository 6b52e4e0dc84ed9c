"""TLS on the collector's ports (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``).

Bound beyond loopback the collector needs a token, and without TLS that token (and every span,
every Sentry event) crosses the network in clear. The same files serve OTLP/HTTP (with the pages,
the API and the Sentry relay on that port) and OTLP/gRPC, so a client trusts one certificate.

Certificates are short-lived where they are issued automatically (ACME, cert-manager, Vault), and
a sidecar is left running for months: the files are looked at again every ``RELOAD_INTERVAL_S``
and, once they change and load as a pair, new connections get them (the open ones keep theirs).
The context a port listens with is never changed (OpenSSL does not take a context changed while
handshakes use it): each handshake is handed the newest good one (``sni_callback``, which OpenSSL
calls with or without a server name), and grpc the very bytes that were checked. A half-replaced
pair (a new certificate beside the old key), or files changing while read, is one warning and the
previous pair serves until the files agree. With ``--tls-client-ca`` clients must present a
certificate that CA signed (mutual TLS), on both ports, and the file trusted is the file as it
now is (to rotate CAs, list the old and the new one in it while both are in use). Over HTTP the
certificate is asked for but checked per request, so that ``/healthz`` still answers a probe that
has none (a kubelet); every other route refuses such a request with 403.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509

if TYPE_CHECKING:
    import grpc

__all__ = [
    "RELOAD_INTERVAL_S",
    "ServerTls",
    "TlsError",
    "TlsFiles",
    "client_certificate_middleware",
    "environment_files",
]

log = logging.getLogger("collector.tls")

#: how often the files are looked at for a renewed certificate (a stat of each, nothing read)
RELOAD_INTERVAL_S: Final = 30.0
#: a certificate expiring sooner than this makes ``/healthz`` degraded (a renewal that did not happen)
EXPIRY_WARNING_S: Final = 7 * 86400


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
    except OSError as error:  # gone between being read and being loaded (a renewal under way)
        raise TlsError(f"--tls-cert {files.cert} / --tls-key {files.key}: {error.strerror or error}") from None


def _load_client_ca(context: ssl.SSLContext, path: Path) -> None:
    """The CAs of ``path`` (from the file, as OpenSSL reads bundles: text around the PEM blocks,
    such as a bundle's ``# Issuer:`` lines in any script, is skipped)."""
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise TlsError(f"--tls-client-ca {path}: no PEM certificate in it ({error.reason or error})") from None
    except OSError as error:
        raise TlsError(f"--tls-client-ca {path}: {error.strerror or error}") from None


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    """What says a file changed without reading it: (inode, size, mtime ns) of each, through
    symbolic links (a Kubernetes secret volume swaps a ``..data`` link); a file that cannot be
    looked at counts as changed (and is then reported by the reload)."""
    out = []
    for path in paths:
        try:
            s = path.stat()
            out.append((s.st_ino, s.st_size, s.st_mtime_ns))
        except OSError:
            out.append((0, -1, 0))
    return tuple(out)


def _not_after(cert: bytes) -> float:
    """When the first certificate of the chain (the server's, as ``load_cert_chain`` takes it)
    expires; +inf for one that OpenSSL serves and ``cryptography``'s stricter parser refuses (an
    old encoding): no expiry to tell then, rather than a service that does not start."""
    try:
        return x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
    except ValueError:
        return math.inf


@dataclass(frozen=True)
class _Loaded:
    """A pair (and client CA) checked whole: the context built from it, its bytes for grpc, and
    when the certificate expires (seconds since the epoch)."""

    context: ssl.SSLContext
    key: bytes
    cert: bytes
    client_ca: bytes | None
    not_after: float


class ServerTls:
    """The server side of TLS for both ports: ``context`` for aiohttp (handing each handshake the
    newest good pair), credentials for grpc that pick up a renewed pair, and ``watch`` to notice
    the renewal. ``TlsError`` on files that cannot serve (checked before anything listens)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = _stamp(files.paths())
        self._loaded = self._load()
        self.context = self._loaded.context  # what the port listens with: never changed
        self.context.sni_callback = self._newest
        self.generation = 0  # bumped each time a changed pair is loaded
        self._warned: tuple[tuple[int, int, int], ...] | None = None
        self._key_mode_warning()

    def _load(self) -> _Loaded:
        """The files read and loaded into a new context, checked to be the same bytes before and
        after (a renewal writing them meanwhile is ``TlsError``: looked at again next time)."""
        files = self.files
        before = self._read()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_pair(context, files)
        key, cert, client_ca = before
        if files.client_ca is not None:
            _load_client_ca(context, files.client_ca)
            # asked for, checked per request (``client_certificate_middleware``): a probe without
            # one still reaches /healthz; a certificate given is verified in the handshake
            context.verify_mode = ssl.CERT_OPTIONAL
            # no resumed sessions: a client resuming one presents no certificate, and would keep
            # its access after its CA was taken out of the file (a full handshake per connection)
            context.options |= ssl.OP_NO_TICKET
        if self._read() != before:
            raise TlsError(f"--tls-cert {files.cert}: the files changed while being read")
        return _Loaded(context, key, cert, client_ca, _not_after(cert))

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        files = self.files
        key, cert = _read(files.key, "--tls-key"), _read(files.cert, "--tls-cert")
        return key, cert, None if files.client_ca is None else _read(files.client_ca, "--tls-client-ca")

    @property
    def not_after(self) -> float:
        """When the certificate serving now expires (seconds since the epoch): for an alert that
        a renewal did not happen (``wft_tls_certificate_expiry_timestamp_seconds``)."""
        return self._loaded.not_after

    def expiry_check(self, now: float | None = None) -> tuple[bool, str | None]:
        """(ok, why not): not ok once the certificate serving expires within ``EXPIRY_WARNING_S``."""
        left = self.not_after - (time.time() if now is None else now)
        if left > EXPIRY_WARNING_S:
            return True, None
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.not_after))
        if left <= 0:
            return False, f"the certificate of --tls-cert {self.files.cert} expired at {when}: renew it"
        return (
            False,
            f"the certificate of --tls-cert {self.files.cert} expires at {when} ({left / 86400:.1f} days): renew it",
        )

    def _newest(self, connection: ssl.SSLObject, _name: str | None, _context: ssl.SSLContext) -> None:
        """OpenSSL's callback early in each handshake: the newest good pair serves it."""
        newest = self._loaded.context
        if newest is not self.context:
            connection.context = newest

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
        Files that do not load (half replaced, unreadable, changing) are one warning for what they
        are now, and the previous pair serves."""
        now = _stamp(self.files.paths())
        if now == self._stamp:
            return False
        try:
            loaded = self._load()
        except TlsError as error:
            if now != self._warned:
                log.warning("TLS files changed but cannot be loaded; the previous ones still serve: %s", error)
                self._warned = now
            return False
        self._loaded, self._stamp, self._warned = loaded, now, None  # one reference: handshakes see old or new
        self.generation += 1
        log.info("TLS: a renewed certificate from %s now serves new connections", self.files.cert)
        return True

    async def watch(self, stop: asyncio.Event, interval: float = RELOAD_INTERVAL_S) -> None:
        """Until ``stop``: every ``interval`` seconds, ``reload_if_changed`` (off the loop: it reads
        files). Nothing it meets ends it: a certificate left unrenewed would expire in service."""
        failed: str | None = None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                try:
                    await asyncio.to_thread(self.reload_if_changed)
                    failed = None
                except Exception as error:  # reported once while it lasts; the next look may succeed
                    if str(error) != failed:
                        log.error("TLS: looking at the files failed (the current pair serves): %s", error)
                        failed = str(error)

    # -- grpc ---------------------------------------------------------------------------------
    def grpc_credentials(self) -> grpc.ServerCredentials:
        """grpc's server credentials from the same pair; grpc asks ``fetch`` at each handshake and
        gets the newest checked pair once ``generation`` moved (``None``: keep the one it has)."""
        import grpc

        served = self.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            if self.generation == served:
                return None
            served = self.generation
            return self._grpc_configuration(self._loaded)

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(self._loaded),
            fetch,
            require_client_authentication=self.files.client_ca is not None,
        )

    @staticmethod
    def _grpc_configuration(loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        import grpc

        return grpc.ssl_server_certificate_configuration(
            [(loaded.key, loaded.cert)], root_certificates=loaded.client_ca
        )


def client_certificate_middleware(open_paths: Collection[str]) -> Middleware:
    """With ``--tls-client-ca``: a request without a verified client certificate gets 403, but on
    ``open_paths`` (``/healthz``: a kubelet probe presents none). The handshake has verified any
    certificate given (``CERT_OPTIONAL``), so one there is one the CA signed."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        certificate = transport.get_extra_info("peercert") if transport is not None else None
        if certificate or request.path in open_paths:
            return await handler(request)
        return web.Response(status=403, text="a client certificate signed by --tls-client-ca is required")

    return middleware


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

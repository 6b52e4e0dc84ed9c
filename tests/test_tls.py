"""collector/tls.py (with app.py, command.py, auth.py): ``wft serve`` over TLS on both ports.

Certificates are made here with ``cryptography`` (a CA, a server certificate for localhost and
127.0.0.1, a client CA and a client certificate). The clients are the real ones: the OTel SDK's
OTLP/HTTP and OTLP/gRPC exporters, ``wft export`` in a subprocess with the OTel TLS variables, and
plain ``http.client``/grpc channels for handshakes. The servers are the collector in process
(``collector`` fixture) and ``wft serve`` as a subprocess."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from collector.auth import COOKIE
from collector.tls import TlsFiles

from .conftest import stored_span_ids, wait_for_line, wft
from .pgserver import free_port
from .sdk_spans import make_sdk_spans

TOKEN = "tls-test-token-0123456789"

# ---- certificates -----------------------------------------------------------------------------

Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _make_ca(cn: str) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(ca: tuple[Key, x509.Certificate], cn: str, *, client: bool = False) -> tuple[Key, x509.Certificate]:
    """A leaf signed by ``ca``: a server certificate for localhost and 127.0.0.1, or a client one."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if not client:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key, password: bytes | None = None) -> bytes:
    encryption = serialization.NoEncryption() if password is None else serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _replace(path: Path, data: bytes) -> None:
    """Write as an ACME client does: a temporary file beside it, then ``os.replace`` (atomic)."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    temporary.chmod(0o600)
    os.replace(temporary, path)


@dataclass
class Pki:
    dir: Path
    ca: Path  # the server's CA: what clients trust
    cert: Path  # server certificate (localhost, 127.0.0.1)
    key: Path
    client_ca: Path  # the CA clients' certificates are signed by (mutual TLS)
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate signed by the server's CA, not the client CA
    stranger_key: Path

    @property
    def server(self) -> TlsFiles:
        return TlsFiles(self.cert, self.key)

    @property
    def mutual(self) -> TlsFiles:
        return TlsFiles(self.cert, self.key, self.client_ca)

    @property
    def client(self) -> tuple[Path, Path]:
        return self.client_cert, self.client_key


@pytest.fixture
def pki(tmp_path) -> Pki:
    out = tmp_path / "tls"
    out.mkdir()
    ca = _make_ca("wft test CA")
    server_key, server_cert = _issue(ca, "localhost")
    client_ca = _make_ca("wft test client CA")
    client_key, client_cert = _issue(client_ca, "exporter", client=True)
    stranger_key, stranger_cert = _issue(ca, "stranger", client=True)
    files = {
        "ca.pem": _cert_pem(ca[1]),
        "cert.pem": _cert_pem(server_cert),
        "key.pem": _key_pem(server_key),
        "client-ca.pem": _cert_pem(client_ca[1]),
        "client.pem": _cert_pem(client_cert),
        "client-key.pem": _key_pem(client_key),
        "stranger.pem": _cert_pem(stranger_cert),
        "stranger-key.pem": _key_pem(stranger_key),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
        if "key" in name:
            (out / name).chmod(0o600)
    return Pki(
        out,
        *(out / n for n in ("ca.pem", "cert.pem", "key.pem", "client-ca.pem", "client.pem", "client-key.pem")),
        out / "stranger.pem",
        out / "stranger-key.pem",
    )


@pytest.fixture(autouse=True)
def _no_ambient_tls(monkeypatch):
    """Nothing from the environment this suite runs in: the clients trust only what a test gives."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "WFT_TLS_", "REQUESTS_CA_BUNDLE", "SSL_CERT_", "CURL_CA_BUNDLE")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("WFT_TOKEN", raising=False)


# ---- clients ------------------------------------------------------------------------------------


def request(
    method: str,
    url: str,
    ca: Path | None = None,
    *,
    body: bytes | None = None,
    headers: dict | None = None,
    client: tuple[Path, Path] | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection (redirects not followed): (status, headers, body). An
    https URL is verified against ``ca`` only, presenting ``client`` (cert, key) when given; a
    refused handshake raises (``ssl.SSLError`` / ``ConnectionError``, both ``OSError``)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if client is not None:
            context.load_cert_chain(str(client[0]), str(client[1]))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, context=context, timeout=timeout
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _healthy(url: str, ca: Path, client: tuple[Path, Path] | None = None) -> bool:
    """Whether ``/healthz`` answers 200 on a fresh connection verified against ``ca`` only."""
    try:
        return request("GET", f"{url}/healthz", ca, client=client, timeout=3)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def _grpc_handshakes(port: int, ca: bytes, timeout: float = 2.0) -> bool:
    """Whether a new grpc channel to localhost:``port`` trusting only ``ca`` gets connected."""
    channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _ids(spans) -> set[str]:
    return {f"{s.context.span_id:016x}" for s in spans}


def _grpc_exporter(service, **kwargs) -> GrpcExporter:
    return GrpcExporter(endpoint=f"localhost:{service.grpc_port}", timeout=3, **kwargs)


# ---- 1. OTLP/HTTP ---------------------------------------------------------------------------------


def test_the_otel_http_exporter_sends_over_tls_and_is_refused_without_the_ca(collector, pki):
    service = collector(tls=pki.server)
    assert service.url == f"https://127.0.0.1:{service.port}"
    endpoint = f"{service.url}/v1/traces"
    # the system's trust store does not know our CA: the handshake fails, nothing is sent
    refused = make_sdk_spans(2)
    assert HttpExporter(endpoint=endpoint, timeout=2).export(refused) == SpanExportResult.FAILURE
    with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP on the TLS port
        request("GET", f"http://127.0.0.1:{service.port}/healthz", timeout=3)
    assert stored_span_ids(service) == set()
    spans = make_sdk_spans(3)
    exporter = HttpExporter(endpoint=endpoint, certificate_file=str(pki.ca), timeout=10)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert stored_span_ids(service) == _ids(spans)
    # the API and the pages share the port, and its certificate
    status, _, body = request("GET", f"{service.url}/api/runs", pki.ca)
    assert status == 200 and b"wrun_" in body


# ---- 2. OTLP/gRPC ---------------------------------------------------------------------------------


def test_the_otel_grpc_exporter_sends_over_tls_and_plaintext_is_refused(collector, pki):
    service = collector(tls=pki.server, grpc_port=0)
    refused = make_sdk_spans(2)
    assert _grpc_exporter(service, insecure=True).export(refused) == SpanExportResult.FAILURE
    # TLS trusting the system's roots only: not ours
    assert _grpc_exporter(service, credentials=grpc.ssl_channel_credentials()).export(refused) == (
        SpanExportResult.FAILURE
    )
    assert stored_span_ids(service) == set()
    spans = make_sdk_spans(3)
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    assert _grpc_exporter(service, credentials=credentials).export(spans) == SpanExportResult.SUCCESS
    assert stored_span_ids(service) == _ids(spans)


# ---- 3. wft export -------------------------------------------------------------------------------


def _export(harness_out: Path, url: str, protocol: str, env: dict, *extra: str):
    data = str(harness_out / "local-data")
    return wft("export", "--dir", data, "--otlp", url, "--otlp-protocol", protocol, "--jobs", "1", *extra, env=env)


def _target(service, protocol: str) -> str:
    return service.url if protocol == "http/protobuf" else f"https://localhost:{service.grpc_port}"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_wft_export_trusts_the_ca_named_by_otel_exporter_otlp_certificate(collector, pki, harness_out, protocol):
    service = collector(tls=pki.server, grpc_port=0)
    target = _target(service, protocol)
    result = _export(harness_out, target, protocol, {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)})
    assert result.returncode == 0, result.stderr
    stored = len(stored_span_ids(service))
    assert stored > 0 and f"exported 11 runs, {stored} spans, 0 errors" in result.stderr, result.stderr


# ---- 4. mutual TLS -------------------------------------------------------------------------------


def test_mutual_tls_over_http_takes_only_clients_the_client_ca_signed(collector, pki):
    """A certificate another CA signed fails the handshake. None at all is let through the
    handshake to /healthz only (a kubelet probe has none): every other route answers 403."""
    service = collector(tls=pki.mutual)
    endpoint = f"{service.url}/v1/traces"
    with pytest.raises((OSError, http.client.HTTPException)):
        request("GET", f"{service.url}/healthz", pki.ca, client=(pki.stranger_cert, pki.stranger_key), timeout=5)
    assert request("GET", f"{service.url}/healthz", pki.ca)[0] == 200
    for method, path in (("GET", "/api/runs"), ("GET", "/"), ("POST", "/v1/traces"), ("GET", "/metrics")):
        status, _, body = request(method, f"{service.url}{path}", pki.ca, body=b"" if method == "POST" else None)
        assert status == 403 and b"client certificate" in body, (path, status)
    assert request("GET", f"{service.url}/healthz", pki.ca, client=pki.client)[0] == 200
    assert request("GET", f"{service.url}/api/runs", pki.ca, client=pki.client)[0] == 200
    refused = make_sdk_spans(2)
    assert HttpExporter(endpoint=endpoint, certificate_file=str(pki.ca), timeout=2).export(refused) == (
        SpanExportResult.FAILURE
    )
    assert stored_span_ids(service) == set()
    spans = make_sdk_spans(3)
    exporter = HttpExporter(
        endpoint=endpoint,
        certificate_file=str(pki.ca),
        client_certificate_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
        timeout=10,
    )
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert stored_span_ids(service) == _ids(spans)


def test_mutual_tls_over_grpc_takes_only_clients_the_client_ca_signed(collector, pki):
    service = collector(tls=pki.mutual, grpc_port=0)
    ca = pki.ca.read_bytes()
    refused = make_sdk_spans(2)
    for credentials in (
        grpc.ssl_channel_credentials(ca),
        grpc.ssl_channel_credentials(ca, pki.stranger_key.read_bytes(), pki.stranger_cert.read_bytes()),
    ):
        assert _grpc_exporter(service, credentials=credentials).export(refused) == SpanExportResult.FAILURE
    assert stored_span_ids(service) == set()
    spans = make_sdk_spans(3)
    credentials = grpc.ssl_channel_credentials(ca, pki.client_key.read_bytes(), pki.client_cert.read_bytes())
    assert _grpc_exporter(service, credentials=credentials).export(spans) == SpanExportResult.SUCCESS
    assert stored_span_ids(service) == _ids(spans)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_wft_export_presents_the_client_certificate_the_otel_variables_name(collector, pki, harness_out, protocol):
    service = collector(tls=pki.mutual, grpc_port=0)
    target = _target(service, protocol)
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca)}
    # without a client certificate: refused (one run, a short timeout: the failure is what is checked)
    result = _export(harness_out, target, protocol, env, "--timeout", "2", "--run", _first_run(harness_out))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert stored_span_ids(service) == set()
    env |= {
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key),
    }
    result = _export(harness_out, target, protocol, env)
    assert result.returncode == 0, result.stderr
    stored = len(stored_span_ids(service))
    assert stored > 0 and f"exported 11 runs, {stored} spans, 0 errors" in result.stderr, result.stderr


def _first_run(harness_out: Path) -> str:
    import json

    results = json.loads((harness_out / "local-runs-summary.json").read_text())["results"]
    first = results[0] if isinstance(results, list) else next(iter(results.values()))
    return str(first["runId"])


# ---- 5. renewal ----------------------------------------------------------------------------------


def _new_pair(pki: Pki) -> tuple[Path, bytes, bytes]:
    """A pair B from a new CA B: (CA B's file, key B PEM, certificate B PEM)."""
    ca_b = _make_ca("wft test CA B")
    key_b, cert_b = _issue(ca_b, "localhost")
    ca_b_file = pki.dir / "ca-b.pem"
    ca_b_file.write_bytes(_cert_pem(ca_b[1]))
    return ca_b_file, _key_pem(key_b), _cert_pem(cert_b)


def test_a_renewed_pair_serves_new_connections_on_both_ports(collector, pki):
    service = collector(tls=pki.server, grpc_port=0, tls_reload_interval=0.2)
    assert _healthy(service.url, pki.ca) and _grpc_handshakes(service.grpc_port, pki.ca.read_bytes())
    ca_b, key_b, cert_b = _new_pair(pki)
    _replace(pki.key, key_b)  # key first, then the certificate: for a moment they do not agree
    _replace(pki.cert, cert_b)
    assert _eventually(lambda: _healthy(service.url, ca_b)), "the renewed certificate never served over HTTPS"
    assert not _healthy(service.url, pki.ca)  # new connections no longer get pair A
    assert _eventually(lambda: _grpc_handshakes(service.grpc_port, ca_b.read_bytes(), 1.0)), (
        "the renewed certificate never served over gRPC"
    )
    assert not _grpc_handshakes(service.grpc_port, pki.ca.read_bytes(), 1.0)
    spans = make_sdk_spans(2)
    credentials = grpc.ssl_channel_credentials(ca_b.read_bytes())
    assert _grpc_exporter(service, credentials=credentials).export(spans) == SpanExportResult.SUCCESS
    assert HttpExporter(endpoint=f"{service.url}/v1/traces", certificate_file=str(ca_b)).export(make_sdk_spans(2)) == (
        SpanExportResult.SUCCESS
    )
    assert service.tls is not None and service.tls.generation == 1  # the half-way state was never loaded


def test_a_half_replaced_pair_is_one_warning_and_the_old_pair_serves(collector, pki, caplog):
    caplog.set_level(logging.WARNING, logger="collector.tls")
    service = collector(tls=pki.server, grpc_port=0, tls_reload_interval=0.2)
    ca_b, key_b, cert_b = _new_pair(pki)
    _replace(pki.cert, cert_b)  # the new certificate beside the old key

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "collector.tls" and r.levelno >= logging.WARNING]

    assert _eventually(lambda: bool(warnings())), "a half-replaced pair was not said"
    time.sleep(1.0)  # five more looks at the same files: no more warnings
    assert len(warnings()) == 1, [r.getMessage() for r in warnings()]
    message = warnings()[0].getMessage()
    assert "previous ones still serve" in message and "is not the key of" in message and str(pki.key) in message
    assert _healthy(service.url, pki.ca) and not _healthy(service.url, ca_b)
    assert _grpc_handshakes(service.grpc_port, pki.ca.read_bytes())
    assert service.tls is not None and service.tls.generation == 0
    # the key follows: the pair now agrees and serves
    _replace(pki.key, key_b)
    assert _eventually(lambda: _healthy(service.url, ca_b))
    assert _eventually(lambda: _grpc_handshakes(service.grpc_port, ca_b.read_bytes(), 1.0))
    assert len(warnings()) == 1


def test_a_kubernetes_secret_volume_swap_is_picked_up(collector, pki, tmp_path):
    """A secret volume: the files are links through ``..data`` to a timestamped folder, and an
    update swaps that link to a new folder and removes the old one."""
    base = tmp_path / "secret"
    base.mkdir()

    def folder(name: str, cert: bytes, key: bytes) -> None:
        (base / name).mkdir()
        (base / name / "tls.crt").write_bytes(cert)
        (base / name / "tls.key").write_bytes(key)
        (base / name / "tls.key").chmod(0o600)

    folder("..2026_12_01_a", pki.cert.read_bytes(), pki.key.read_bytes())
    os.symlink("..2026_12_01_a", base / "..data")
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", base / name)
    files = TlsFiles(base / "tls.crt", base / "tls.key")
    service = collector(tls=files, grpc_port=0, tls_reload_interval=0.2)
    assert _healthy(service.url, pki.ca)
    ca_b, key_b, cert_b = _new_pair(pki)
    folder("..2026_12_01_b", cert_b, key_b)
    os.symlink("..2026_12_01_b", base / "..data_tmp")
    os.replace(base / "..data_tmp", base / "..data")  # what the kubelet does, atomically
    shutil.rmtree(base / "..2026_12_01_a")
    assert _eventually(lambda: _healthy(service.url, ca_b))
    assert _eventually(lambda: _grpc_handshakes(service.grpc_port, ca_b.read_bytes(), 1.0))


def test_a_changed_client_ca_file_is_trusted_as_it_now_is_on_both_ports(collector, pki):
    """The client CA file is trusted as it is, the same on both ports: a CA taken out of it (retired,
    compromised) is trusted no more; to rotate, the file lists both while both are in use."""
    service = collector(tls=pki.mutual, grpc_port=0, tls_reload_interval=3600)
    old = (pki.client_cert, pki.client_key)
    ca = pki.ca.read_bytes()

    def grpc_client(cert: Path, key: Path) -> bool:
        credentials = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
        return _grpc_exporter(service, credentials=credentials).export(make_sdk_spans(1)) == SpanExportResult.SUCCESS

    def https_client(cert: Path, key: Path) -> bool:
        try:
            return request("GET", f"{service.url}/api/runs", pki.ca, client=(cert, key), timeout=3)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    assert https_client(*old) and grpc_client(*old)
    new_ca = _make_ca("wft test client CA B")
    new_key, new_cert = _issue(new_ca, "exporter B", client=True)
    (pki.dir / "new.pem").write_bytes(_cert_pem(new_cert))
    (pki.dir / "new-key.pem").write_bytes(_key_pem(new_key))
    new = (pki.dir / "new.pem", pki.dir / "new-key.pem")
    _replace(pki.client_ca, pki.client_ca.read_bytes() + _cert_pem(new_ca[1]))  # both, while rotating
    assert service.tls is not None and service.tls.reload_if_changed()
    assert https_client(*old) and grpc_client(*old) and https_client(*new) and grpc_client(*new)
    _replace(pki.client_ca, _cert_pem(new_ca[1]))  # the old CA taken out
    assert service.tls.reload_if_changed()
    assert not https_client(*old) and not grpc_client(*old)
    assert https_client(*new) and grpc_client(*new)


def test_a_client_ca_bundle_with_comments_in_any_script_loads(collector, pki):
    """Bundles carry text around their PEM blocks (certifi's ``# Issuer:`` lines), in any script."""
    bundle = "# Issuer: CN=Client CA Főtanúsítvány, O=Példa\n".encode() + pki.client_ca.read_bytes()
    _replace(pki.client_ca, bundle)
    service = collector(tls=pki.mutual)
    assert request("GET", f"{service.url}/api/runs", pki.ca, client=pki.client)[0] == 200


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_a_client_cannot_resume_its_way_past_a_removed_client_ca(collector, pki, version):
    """A resumed session presents no certificate: under mutual TLS none is resumed, so a client
    whose CA was taken out of the file gets no further, however recently it connected."""
    service = collector(tls=pki.mutual, tls_reload_interval=3600)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.maximum_version = version
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))

    def get(session: ssl.SSLSession | None = None) -> tuple[bool, int, ssl.SSLSession | None]:
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                connection = http.client.HTTPConnection("localhost")
                connection.sock = tls
                connection.request("GET", "/api/runs")
                status = connection.getresponse().status
                return tls.session_reused, status, tls.session

    reused, status, session = get()
    assert (reused, status) == (False, 200)
    _replace(pki.client_ca, _cert_pem(_make_ca("another client CA")[1]))  # the exporter's CA taken out
    assert service.tls is not None and service.tls.reload_if_changed()
    with pytest.raises((OSError, http.client.HTTPException)):
        get(session)


def test_the_certificates_expiry_is_a_metric_and_a_week_before_it_healthz_says_so(collector, pki):
    """An alert that a renewal did not happen: ``wft_tls_certificate_expiry_timestamp_seconds`` on
    /metrics, and /healthz degraded (still 200: the port serves) once it is a week away."""
    service = collector(tls=pki.server, tls_reload_interval=3600)
    not_after = x509.load_pem_x509_certificate(pki.cert.read_bytes()).not_valid_after_utc.timestamp()
    status, _, text = request("GET", f"{service.url}/metrics", pki.ca)
    samples = {s.name: s.value for family in text_string_to_metric_families(text.decode()) for s in family.samples}
    assert status == 200 and samples["wft_tls_certificate_expiry_timestamp_seconds"] == not_after
    status, _, body = request("GET", f"{service.url}/healthz", pki.ca)
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "degraded"  # the test certificates live a day
    assert answer["checks"]["tls"]["ok"] is False and "expires at" in answer["checks"]["tls"]["reason"]
    assert service.tls is not None
    assert service.tls.expiry_check(now=not_after - 30 * 86400) == (True, None)
    ok, reason = service.tls.expiry_check(now=not_after + 1)
    assert not ok and reason is not None and "expired at" in reason


def test_the_watch_outlives_what_it_meets(collector, pki, caplog, monkeypatch):
    """A look at the files that fails in a way not foreseen is logged once, and the next look goes
    on: a watch that ended would leave the certificate to expire in service."""
    service = collector(tls=pki.server, tls_reload_interval=0.1)
    tls = service.tls
    assert tls is not None
    real = tls.reload_if_changed
    failures = iter([RuntimeError("unforeseen"), RuntimeError("unforeseen")])

    def once_failing() -> bool:
        error = next(failures, None)
        if error is not None:
            raise error
        return real()

    monkeypatch.setattr(tls, "reload_if_changed", once_failing)
    caplog.set_level(logging.ERROR, logger="collector.tls")
    ca_b, key_b, cert_b = _new_pair(pki)
    _replace(pki.key, key_b)
    _replace(pki.cert, cert_b)
    assert _eventually(lambda: _healthy(service.url, ca_b)), "the watch ended on the error"
    errors = [r.getMessage() for r in caplog.records if r.name == "collector.tls"]
    assert len(errors) == 1 and "unforeseen" in errors[0]


# ---- 6. token over TLS --------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_the_session_cookie_is_secure_over_tls(collector, pki, tls):
    service = collector(token=TOKEN, tls=pki.server if tls else None)
    form = urlencode({"token": TOKEN, "next": "/"}).encode()
    answers = [
        request(
            "POST",
            f"{service.url}/login",
            pki.ca,
            body=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        request("GET", f"{service.url}/?token={TOKEN}", pki.ca),
    ]
    for status, headers, _ in answers:
        cookies = headers.get_all("Set-Cookie") or []
        assert status == 303 and len(cookies) == 1 and cookies[0].startswith(f"{COOKIE}=")
        attributes = {a.strip().lower() for a in cookies[0].split(";")}
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert ("secure" in attributes) == tls, cookies[0]


# ---- 7. wft serve: errors -----------------------------------------------------------------------

#: runs its arguments with a terminal of its own as the controlling terminal, stdin closed: an
#: OpenSSL password prompt would open /dev/tty and wait there (a hang the timeout turns into a failure)
_ON_A_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "fd = int(sys.argv[1])\n"
    "fcntl.ioctl(fd, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _serve_fails(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    master, terminal = os.openpty()
    command = [sys.executable, "-m", "telemetry", "serve", "--store", str(tmp_path / "store.sqlite3")]
    command += ["--no-world", "--port", "0", "--grpc-port", "off", *args]
    try:
        return subprocess.run(
            [sys.executable, "-c", _ON_A_TERMINAL, str(terminal), *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
            pass_fds=(terminal,),
            env={**os.environ, **(env or {})},
        )
    finally:
        os.close(master)
        os.close(terminal)


def _error_cases(pki: Pki) -> dict[str, tuple[list[str], dict, str]]:
    other_key = pki.dir / "other-key.pem"
    other_key.write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    encrypted = pki.dir / "encrypted-key.pem"
    encrypted.write_bytes(_key_pem(serialization.load_pem_private_key(pki.key.read_bytes(), None), password=b"pw"))
    garbage = pki.dir / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = pki.dir / "missing.pem"
    cert, key = str(pki.cert), str(pki.key)
    return {
        "cert-only": (["--tls-cert", cert], {}, "--tls-key is missing"),
        "key-only": (["--tls-key", key], {}, "--tls-cert is missing"),
        "cert-only-variable": ([], {"WFT_TLS_CERT": cert}, "--tls-key is missing"),
        "missing-cert": (["--tls-cert", str(missing), "--tls-key", key], {}, f"--tls-cert {missing}: No such file"),
        "missing-key": (["--tls-cert", cert, "--tls-key", str(missing)], {}, f"--tls-key {missing}: No such file"),
        "another-key": (["--tls-cert", cert, "--tls-key", str(other_key)], {}, "is not the key of --tls-cert"),
        "encrypted-key": (["--tls-cert", cert, "--tls-key", str(encrypted)], {}, "the key is encrypted"),
        "not-pem": (["--tls-cert", str(garbage), "--tls-key", key], {}, f"--tls-cert {garbage}"),
        "client-ca-only": (["--tls-client-ca", str(pki.client_ca)], {}, "--tls-client-ca needs --tls-cert"),
        "client-ca-not-pem": (
            ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(garbage)],
            {},
            f"--tls-client-ca {garbage}: no PEM certificate",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cert-only",
        "key-only",
        "cert-only-variable",
        "missing-cert",
        "missing-key",
        "another-key",
        "encrypted-key",
        "not-pem",
        "client-ca-only",
        "client-ca-not-pem",
    ],
)
def test_bad_tls_files_are_a_one_line_usage_error(tmp_path, pki, case):
    args, env, expected = _error_cases(pki)[case]
    try:
        result = _serve_fails(tmp_path, *args, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"wft serve {' '.join(args)} hung (a password prompt?)")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("wft serve: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "store.sqlite3").exists()  # refused before anything was opened


# ---- 8. wft serve over TLS ----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["flags", "variables"])
def test_wft_serve_serves_both_ports_over_tls(tmp_path, pki, given):
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "telemetry", "serve", "--store", str(tmp_path / "store.sqlite3"), "--no-world"]
    command += ["--port", str(port), "--grpc-port", str(grpc_port)]
    env = dict(os.environ)
    if given == "flags":
        command += ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    else:
        env |= {"WFT_TLS_CERT": str(pki.cert), "WFT_TLS_KEY": str(pki.key)}
    command += ["--log-format", "json"]  # every line it writes must parse: grpc's own too
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = json.loads(wait_for_line(process, "listening on "))["message"]
        assert f"listening on https://127.0.0.1:{port}" in line, line
        assert f"OTLP/gRPC over TLS on 127.0.0.1:{grpc_port}" in line, line
        status, _, body = request("GET", f"https://127.0.0.1:{port}/healthz", pki.ca)
        assert status == 200, body
        assert not _healthy(f"https://127.0.0.1:{port}", pki.client_ca)  # verified, not just reached
        spans = make_sdk_spans(2)
        exporter = GrpcExporter(
            endpoint=f"localhost:{grpc_port}", credentials=grpc.ssl_channel_credentials(pki.ca.read_bytes()), timeout=10
        )
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        for target in (grpc_port, port):  # what a scanner or a plaintext client sends a TLS port
            with socket.create_connection(("127.0.0.1", target)) as hostile:
                hostile.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x16\x03\x01garbage" * 50)
        assert not _healthy(f"http://127.0.0.1:{port}", pki.ca)
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0
    for text in rest.splitlines():
        assert json.loads(text)["logger"].startswith(("collector", "wft", "aiohttp", "asyncio")), text

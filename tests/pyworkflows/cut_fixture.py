"""Cut ``tests/fixtures/pylocal-cut`` from a fresh real run of ``apps`` (machine paths become ``/app``).

``python -m tests.pyworkflows.cut_fixture [DEST]`` runs every scenario through ``run.py`` into a temp dir,
copies the data dir with machine paths rewritten (inside JSON text, inside the base64 ``devl`` payloads and
inside stream frames, re-framed so the length prefixes stay right), drops transient files, and writes
``MANIFEST.json``: scenario -> what vercel-workflow's own API reported for that run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DEST = REPO / "tests" / "fixtures" / "pylocal-cut"


def machine_paths() -> list[str]:
    """Longest first, so a venv inside the repo is rewritten before the repo itself."""
    found = {str(REPO), sys.prefix, sys.base_prefix, sysconfig.get_paths()["stdlib"]}
    return sorted((p for p in found if p and p != "/"), key=len, reverse=True)


def scrub_text(text: str, paths: list[str]) -> str:
    for path in paths:
        text = text.replace(path, "/app")
        text = text.replace(json.dumps(path)[1:-1], "/app")  # as escaped inside JSON strings
    return text


def _scrub_value(value: Any, paths: list[str]) -> Any:
    if isinstance(value, dict):
        if value.get("__type") == "Uint8Array" and isinstance(value.get("data"), str):
            raw = base64.b64decode(value["data"])
            return {"__type": "Uint8Array", "data": base64.b64encode(scrub_bytes(raw, paths)).decode()}
        return {k: _scrub_value(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, paths) for v in value]
    if isinstance(value, str):
        return scrub_text(value, paths)
    return value


def scrub_bytes(raw: bytes, paths: list[str]) -> bytes:
    """A serialized payload; ``zstd``/``gzip`` envelopes (spec version 5) are opened and re-made."""
    if raw[:4] == b"zstd":
        import zstandard

        inner = scrub_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(raw[4:]), paths)
        return b"zstd" + zstandard.ZstdCompressor(level=3).compress(inner)
    if raw[:4] == b"gzip":
        import gzip

        return b"gzip" + gzip.compress(scrub_bytes(gzip.decompress(raw[4:]), paths), mtime=0)
    return scrub_text(raw.decode("utf-8"), paths).encode("utf-8")


def scrub_chunk(raw: bytes, paths: list[str]) -> bytes:
    """A chunk file: flag byte, then ``u32be length + payload`` frames."""
    out = [raw[:1]]
    offset = 1
    while offset + 4 <= len(raw):
        (length,) = struct.unpack_from(">I", raw, offset)
        frame = scrub_bytes(raw[offset + 4 : offset + 4 + length], paths)
        out += [struct.pack(">I", len(frame)), frame]
        offset += 4 + length
    return b"".join(out)


def cut(source: Path, dest: Path, report: dict[str, Any]) -> None:
    paths = machine_paths()
    if dest.exists():
        shutil.rmtree(dest)
    for path in sorted(source.rglob("*")):
        if path.is_dir() or path.name.startswith("tmp"):
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            text = path.read_text()
            try:
                data = json.loads(text)
            except ValueError:
                target.write_text(scrub_text(text, paths))
                continue
            compact = "\n" not in text.strip()  # token claims are compact, everything else indent=2
            body = json.dumps(
                _scrub_value(data, paths),
                ensure_ascii=False,
                **({"separators": (",", ":")} if compact else {"indent": 2}),
            )
            target.write_text(body)
        elif path.suffix == ".bin":
            target.write_bytes(scrub_chunk(path.read_bytes(), paths))
        else:
            target.write_bytes(scrub_bytes(path.read_bytes(), paths))
    manifest = json.loads(scrub_text(json.dumps(report), paths))
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main() -> int:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DEST
    with tempfile.TemporaryDirectory(prefix="pylocal-") as tmp:
        data = Path(tmp) / "data"
        result = subprocess.run(
            [sys.executable, "-m", "tests.pyworkflows.run", str(data)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if result.returncode != 0:
            sys.stderr.write(result.stderr[-3000:])
            return 1
        cut(data, dest, json.loads(result.stdout))
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

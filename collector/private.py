"""What the collector keeps to itself: the files it creates (0600, folders 0700) and the secrets
that must never reach a log line or an error (passwords in URLs, DSN keys, tokens).

The store holds every span, the spools hold Sentry auth headers and upstream URLs, the checkpoint
says what the world holds: none of it is for other users of the machine. And a URL is logged
only through ``redact``, which keeps where it points and drops who it authenticates as.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file", "redact", "write_private"]

DIR_MODE = 0o700
FILE_MODE = 0o600

#: query parameters and key=value DSN words that carry credentials
_SECRET_NAMES = re.compile(r"pass|secret|token|key|auth|sig|credential", re.I)
_KEYWORD_SECRET = re.compile(r"\b(password|passfile|sslpassword|sslkey)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", re.I)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder, creating what is missing with mode 0700 (folders already there are
    left as their owner set them)."""
    folder = Path(path)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for created in reversed(missing):
        try:
            created.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(created, DIR_MODE)  # mkdir's mode is masked by the umask
    return folder


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty with mode 0600 when it does not exist (an existing file is left alone)."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return target
    os.close(fd)
    return target


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a new or truncated file of mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def redact(url: str) -> str:
    """``url`` fit for a log line: no password or user in it, no secret-looking query parameter.
    Also takes libpq's ``key=value`` form (``host=… password=…``)."""
    if "://" not in url:
        return _KEYWORD_SECRET.sub(lambda m: f"{m.group(1)}=***", url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a URL after all: say nothing of it
        return "<unparseable URL>"
    netloc = f"***@{host}{port}" if parts.username or parts.password else f"{host}{port}"
    query = urlencode(
        [(k, "***" if _SECRET_NAMES.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

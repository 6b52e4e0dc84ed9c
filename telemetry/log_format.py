"""``--log-format json``: one JSON object a line, for log pipelines that parse what they collect.

A service left running beside a deployment (``wft serve``, ``wft follow``) is read by Loki,
CloudWatch or a Kubernetes log agent more often than by a person; those index fields, not text,
and a multi-line traceback read as text becomes many unrelated entries. Each record is one line:
``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and ``exception`` (the traceback, in
the one string) when there is one. What a message says is the same as in text: already free of
secrets (``collector.private.redact``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Final

__all__ = ["FORMATS", "JsonFormatter", "formatter"]

#: the values of ``--log-format`` (and ``WFT_LOG_FORMAT``)
FORMATS: Final = ("text", "json")
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(name: str) -> logging.Formatter:
    """The formatter ``--log-format`` names (``FORMATS``)."""
    return JsonFormatter() if name == "json" else logging.Formatter(_TEXT)

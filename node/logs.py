"""The node's log: one line per event, as text (for people) or JSON (for collectors).

``setup_logging(level, fmt)`` configures the root logger on standard error:

* ``text``: ``2026-01-02 10:11:12,345 INFO seamless_node.requests: <message>``;
* ``json``: one JSON object per line, with ``time`` (ISO 8601, UTC), ``level``,
  ``logger``, ``message``, the fields the event carries (a request's ``method``,
  ``path``, ``status``, ``bytes``, ``duration``, ``client``; a job's ``job``, ``state``,
  ...; passed as ``extra={"fields": {...}}``) and, for errors, ``exception``.

Either way a record is exactly one line: control characters in a message (a path, an
error text, anything that may come from a client, a peer or a job) are escaped as
``\\xNN`` (``\\n`` and ``\\r`` included), so nothing logged can forge a line. Only a
traceback, appended by the text format after the message, spans several lines, each
indented by four spaces (a record always starts at the line's first column).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import time
from typing import Any

FORMATS = ("text", "json")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """*text* with its control characters (newlines included) escaped."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # the local time to the second changes once a second: format it once a second
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(record.msecs):03d}"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # a traceback's lines are indented: no text in it can pass for a record of its own
        return text.replace("\n", "\n    ") if "\n" in text else text


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
            self._second, self._stamp = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes every control character: one line whatever the text
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record to standard error in *fmt* (text or json) from *level* up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # no record field uses them: skip collecting thread and process names for every record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # hypercorn logs every connection error at its own level; the node's front logs requests
    logging.getLogger("hypercorn.access").disabled = True

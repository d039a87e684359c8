"""Log lines on stderr: timestamped text, or one JSON object per line (``--log-format json``).

Both carry an ISO-8601 UTC timestamp to the millisecond. JSON lines hold ``ts``,
``level``, ``logger``, ``message`` and the record's structured extras (``run_id``,
``step``, ``status``, ``seconds``, ``counts``, ``exit_code``...), as the job passes them
with ``extra=``. The service logs counts, names of steps and error classes only, never
customer data or secrets; an exception is logged by its class and traceback frames.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure"]

FORMATS = ("text", "json")

#: The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _ts(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``2026-12-05T14:20:01.123Z INFO churn.job.run: step stripe success in 3.2s``, then
    the extras as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        more = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras(record).items())
        line = f"{_ts(record)} {record.levelname} {record.name}: {record.getMessage()}"
        line = f"{line} {more}" if more else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            body.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            body["exc_type"] = record.exc_info[0].__name__
            body["traceback"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is at each record (a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(fmt: str = "text", level: int | str = logging.WARNING) -> None:
    """Send the ``churn`` loggers (and warnings from libraries) to stderr in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_churn", False):
            root.removeHandler(old)
    handler._churn = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("churn").setLevel(level)
    # The Stripe SDK's request lines (INFO, one per request) only with -v; never its
    # DEBUG, where it logs whole response bodies (customer data).
    verbose = logging.getLogger("churn").getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("stripe").setLevel(logging.INFO if verbose else logging.WARNING)
    # -v shows every HTTP request (urllib3: method, host, path and status; never a body),
    # as `churn -v` always has: the fault suite's kill points are these lines.
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose else logging.WARNING)

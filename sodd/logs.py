"""Logging set-up for the daemon, and the one line each detection request leaves.

Text is the default because journald (and most supervisors) already stamp each line with the time
and the unit, so the text format carries no time stamp. JSON lines are for log shippers; they carry
their own time stamp because files and pipelines do not add one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Request lines have their own logger so operators can turn them on alone:
# e.g. logging.getLogger("sodd.requests").setLevel(logging.DEBUG).
request_log = logging.getLogger("sodd.requests")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields given as `extra={"fields": {...}}` become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)  # quoted, so key=value pairs still split cleanly
    return text


def request_message(fields: dict[str, Any]) -> str:
    """`Detect request_id=... model=... code=OK latency_ms=12.3 ...` for the text format."""
    parts = [str(fields.get("method", "request"))]
    for key, value in fields.items():
        if key == "method":
            continue
        if key == "latency_seconds":
            parts.append(f"latency_ms={value * 1000:.1f}")
        else:
            parts.append(f"{key}={_text_value(value)}")
    return " ".join(parts)


def log_request(fields: dict[str, Any]) -> None:
    """Debug for an answered request, warning for one that failed: the failures are what an
    operator reads at the default level."""
    level = logging.DEBUG if fields.get("code") == "OK" else logging.WARNING
    if request_log.isEnabledFor(level):
        request_log.log(level, "%s", request_message(fields), extra={"fields": fields})

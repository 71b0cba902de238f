"""Logging set-up for the daemon, and the one line each detection request leaves.

Text is the default because journald (and most supervisors) already stamp each line with the time
and the unit, so the text format carries no time stamp. JSON lines are for log shippers; they carry
their own time stamp because files and pipelines do not add one.
"""

from __future__ import annotations

import json
import logging
import numbers
import sys
import unicodedata
from datetime import datetime, timezone
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Request lines have their own logger so operators can turn them on alone:
# e.g. logging.getLogger("sodd.requests").setLevel(logging.DEBUG).
request_log = logging.getLogger("sodd.requests")
# Characters that must never reach a log line raw: controls (newlines among them, so a value cannot
# start a forged line), format characters (bidi overrides reorder what a reader sees), surrogates
# (undecodable file names, which stderr cannot even encode) and Unicode line separators.
CONTROL_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
# A log argument longer than this is cut: a 4 MB model name must not make a 4 MB line.
ARG_LIMIT = 1000


class Safe(str):
    """Text already escaped for a log line (the request line): formatters leave it as it is."""


def has_control(text: str) -> bool:
    return not text.isprintable() and any(unicodedata.category(c) in CONTROL_CATEGORIES for c in text)


def _escape_char(c: str) -> str:
    if unicodedata.category(c) not in CONTROL_CATEGORIES:
        return c
    if c in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(value: object, limit: int | None = 128) -> str:
    """A value from outside (a client, a file name) made safe for one log line: control characters
    become backslash escapes, and more than `limit` characters are cut to a prefix and "..."."""
    text = value if isinstance(value, str) else str(value)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():  # isprintable is fast; most values need nothing
        text = "".join(map(_escape_char, text))
        if limit is not None and len(text) > limit:
            text, cut = text[:limit], True
    return f"{text}..." if cut else text


def quote(value: str, limit: int = 64) -> str:
    """A client's string for an error message: quoted, escaped, and at most `limit` characters of
    it, so that a huge name cannot overflow the status trailer (HTTP/2 refuses big headers and the
    client sees "Stream removed" instead of the status)."""
    return f"'{escape(value, limit)}'"


def _safe_arg(value: object, limit: int, escape_controls: bool) -> object:
    if isinstance(value, (numbers.Number, Safe)) or value is None:
        return value  # numbers keep %d and %.1f working
    if escape_controls:
        return escape(value, limit)
    text = str(value)
    return f"{text[:limit]}..." if len(text) > limit else text


def safe_record(record: logging.LogRecord, escape_controls: bool) -> logging.LogRecord:
    """A copy of `record` whose arguments are bounded (and escaped for text lines); the record
    itself is shared with other handlers and stays untouched."""
    args = record.args
    if not args and isinstance(record.msg, str):
        return record
    copy = logging.makeLogRecord(record.__dict__)
    if not isinstance(record.msg, str):
        copy.msg = _safe_arg(record.msg, ARG_LIMIT, escape_controls)
    if isinstance(args, dict):
        copy.args = {k: _safe_arg(v, ARG_LIMIT, escape_controls) for k, v in args.items()}
    elif args:
        copy.args = tuple(_safe_arg(v, ARG_LIMIT, escape_controls) for v in args)
    return copy


class TextFormatter(logging.Formatter):
    """One record, one line: what came from outside is escaped, so no value can forge a line. The
    lines of a traceback are indented, so every line that starts at the margin is a real record."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape(super().formatMessage(record), None)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(safe_record(record, escape_controls=True)).replace("\n", "\n  ")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields given as `extra={"fields": {...}}` become top-level keys.
    JSON escapes control characters itself; long values are cut as in text lines."""

    def format(self, record: logging.LogRecord) -> str:
        record = safe_record(record, escape_controls=False)
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None) or {}
        entry.update({k: _safe_arg(v, ARG_LIMIT, False) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _text_value(value: object) -> str:
    text = escape(value, 256)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)  # quoted, so key=value pairs still split cleanly
    return text


def request_message(fields: dict[str, Any]) -> Safe:
    """`Detect request_id=... model=... code=OK latency_ms=12.3 ...` for the text format."""
    parts = [str(fields.get("method", "request"))]
    for key, value in fields.items():
        if key == "method":
            continue
        if key == "latency_seconds":
            parts.append(f"latency_ms={value * 1000:.1f}")
        else:
            parts.append(f"{key}={_text_value(value)}")
    return Safe(" ".join(parts))


def log_request(fields: dict[str, Any], quiet: bool = False) -> None:
    """Debug for an answered request, warning for one that failed: the failures are what an
    operator reads at the default level. `quiet` refusals (a full call budget, before the request
    was read) are debug too: in a flood they would bury everything else, and their counter says it."""
    level = logging.DEBUG if quiet or fields.get("code") == "OK" else logging.WARNING
    if request_log.isEnabledFor(level):
        request_log.log(level, "%s", request_message(fields), extra={"fields": fields})

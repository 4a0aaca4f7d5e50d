"""Log lines of llmcluster's own loggers, as text or JSON, each carrying the id of the request it is about."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, TextIO

from serve_app.serve_internals import serve_request_id

if TYPE_CHECKING:  # the config models load pydantic; a log setup does not need them
    from serve_app.observability_config import LoggingSettings

# Set where llmcluster itself learns a request's id outside Serve (the router run alone); inside a Serve
# replica, Serve's own request context already holds it, for every line logged while serving that request.
_request_id: ContextVar[str | None] = ContextVar("llmcluster_request_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_FORMAT_WITH_ID = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# Marks the handler configure_logging installs, so that calling it again replaces it instead of adding one.
_HANDLER_MARK = "_llmcluster_handler"


class LogFormat(str, Enum):
    """The values of logging.format, as the CLI's --log-format takes them."""

    TEXT = "text"
    JSON = "json"


def serve_logging_config(settings: LoggingSettings) -> dict[str, Any] | None:
    """Serve's own `logging_config` (serve.start, and the RayService's serveConfigV2): JSON log files with
    json, Serve's defaults otherwise. Serve's lines on stderr stay text either way."""
    return {"encoding": "JSON"} if settings.format == "json" else None


def internal_logging_config(settings: LoggingSettings) -> dict[str, Any]:
    """Serve's `logging_config` of the internal deployments (quota ledger, metrics hub): no access log, whose
    line per lease or metrics push would bury the lines about requests."""
    return {**(serve_logging_config(settings) or {}), "enable_access_log": False}


def bind_request_id(request_id: str) -> Token[str | None]:
    return _request_id.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get() or serve_request_id()


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (None outside a request); it filters nothing out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, with ` [request id]` after the logger name for a line about a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._with_id = logging.Formatter(TEXT_FORMAT_WITH_ID)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None):
            return self._with_id.format(record)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and request_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: str, level: int | str, logger_name: str = "",
                      stream: TextIO | None = None) -> None:
    """Log `logger_name`'s records (the root's by default) to `stream` (stderr) in `log_format`, text or json.

    Called once per process at its entry point: the CLI, and each replica for the `serve_app` loggers (which
    then stop propagating, so a library's root handler does not print them twice)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    target = logging.getLogger(logger_name)
    for old in [h for h in target.handlers if getattr(h, _HANDLER_MARK, False)]:
        target.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(level)
    if logger_name:
        target.propagate = False

"""Logging set-up: one ``configure_logging()`` for the whole package.

Modules take ``log = structlog.get_logger(__name__)`` and bind per-record context
with ``structlog.contextvars.bound_contextvars(custom_id=...)``.
"""

from __future__ import annotations

import logging
import sys

import structlog

_SECRET_KEYS = ("api_key", "authorization", "token", "secret", "password")


def _redact(_logger, _name, event_dict):
    """Drop values of keys that look like secrets, wherever a caller put them."""
    for key in list(event_dict):
        if any(s in key.lower() for s in _SECRET_KEYS) and key != "tokens":
            event_dict[key] = "***"
    return event_dict


class _CurrentStderr:
    """Forwards to whatever ``sys.stderr`` is when a line is written.

    Binding the stream object itself would leave logging on a closed file once
    the caller swaps ``sys.stderr`` (test runners and notebooks do).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(json: bool = False, level: str = "info", stream=None) -> None:
    """Configure structlog: readable console lines by default, JSON lines with ``json=True``.

    Lines go to ``stream``, by default to the ``sys.stderr`` of the moment.
    """
    stream = stream or _CurrentStderr()
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

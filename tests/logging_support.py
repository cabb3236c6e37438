"""Keep structlog writing to whatever ``sys.stderr`` is now.

``configure_logging()`` binds the stream it is given; pytest swaps ``sys.stderr`` per
test and closes the old one, so a command run inside one test would otherwise leave
logging pointed at a closed file for the tests after it.
"""

from __future__ import annotations

import sys

import pytest

from odie_async.logs import configure_logging


class CurrentStderr:
    """A stream that forwards to the ``sys.stderr`` of the moment."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def logging_to_current_stderr():
    configure_logging(stream=CurrentStderr())
    yield
    configure_logging(stream=CurrentStderr())

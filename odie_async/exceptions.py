"""The one exception hierarchy of odie_async.

Third-party errors (aiohttp, orjson, yaml, vLLM, transformers) are translated into
these classes at one boundary each (``client.py`` for HTTP, ``batchfile.py`` for
input files, ``files.py`` and ``settings.py`` for YAML, JSON and config files,
``serve.py`` for the model server), so callers only ever catch ``OdieError`` and
its subclasses::

    OdieError
    ├── ConfigError                 a config file or option is wrong
    ├── InputError                  a line of an input file is wrong (path, line_no)
    │   └── DuplicateIdError        a custom_id appears twice (names both lines)
    ├── RequestError                one HTTP request failed (status, retryable)
    │   ├── TransportError          connection refused/reset, timeout      retryable
    │   ├── RateLimitError          429, carries retry_after               retryable
    │   ├── ServerError             5xx                                    retryable
    │   ├── MalformedResponseError  body is not the JSON we expect         retryable
    │   ├── ClientRequestError      400/404/422...: the request is wrong   final
    │   └── AuthenticationError     401/403: the key is wrong              stops the run
    ├── RunAborted                  the run stopped: circuit breaker, auth, signal
    │   ├── EndpointStopped         the endpoint stopped it: down, key refused, quota   exit 3
    │   ├── OutputError             a result file could not be written (disk full...)  exit 4
    │   ├── SpendCapReached         the spending cap (--max-cost) stopped intake         exit 5
    │   └── EngineCrashed           an unexpected exception in one of the engine's tasks exit 4
    ├── ServeError                  a model server could not start or died
    ├── EvalError                   a predictions file cannot be scored                exit 2
    └── TrainError                  training data or settings are unusable             exit 2

``exit_code`` below is the one map from an exception to a process exit code; the
command line re-exports it as ``odie_async.cli.exit_code`` and every command, the
library runners included, ends through it. A signal's code is ``signal_exit_code``.
"""

from __future__ import annotations

# The exit codes every command shares (README, "Exit codes").
EXIT_OK, EXIT_FAILED_RECORDS, EXIT_USAGE, EXIT_ENDPOINT, EXIT_LOCAL, EXIT_SPEND_CAP = 0, 1, 2, 3, 4, 5


class OdieError(Exception):
    """Base class of every error odie_async raises on purpose."""


class ConfigError(OdieError):
    """A config file or a command-line option is invalid."""


class InputError(OdieError):
    """A line of an input file is invalid; names the file and the line."""

    def __init__(self, path: str, line_no: int, message: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.message = message
        super().__init__(f"{self.path}:{line_no}: {message}")


class DuplicateIdError(InputError):
    """The same custom_id appears on two lines of the input."""

    def __init__(self, path: str, custom_id: str, first_line: int, line_no: int) -> None:
        self.custom_id = custom_id
        self.first_line = first_line
        super().__init__(
            path, line_no, f"duplicate custom_id {custom_id!r} (first seen on line {first_line})"
        )


class RequestError(OdieError):
    """One request failed. ``retryable`` says whether sending it again can help."""

    retryable = False
    code = "request_error"

    def __init__(self, message: str, status: int | None = None, body: bytes | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


class TransportError(RequestError):
    """Connection refused or reset, or no answer within the timeout."""

    retryable = True
    code = "transport_error"


class RateLimitError(RequestError):
    """HTTP 429; ``retry_after`` is the server's hint in seconds, if any."""

    retryable = True
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(RequestError):
    """HTTP 5xx."""

    retryable = True
    code = "server_error"


class MalformedResponseError(RequestError):
    """The body could not be parsed as the expected JSON."""

    retryable = True
    code = "malformed_response"


class ClientRequestError(RequestError):
    """HTTP 4xx other than 401/403/429: the request itself is wrong."""

    code = "invalid_request"


class AuthenticationError(RequestError):
    """HTTP 401/403: every request would fail the same way, so the run stops."""

    code = "authentication_error"


class RunAborted(OdieError):
    """The run was stopped before finishing (circuit breaker, bad key, signal)."""


class EndpointStopped(RunAborted):
    """The endpoint stopped the run: it is down, refuses the key, or asks for a long wait."""


class OutputError(RunAborted):
    """A result file could not be written; names the file and the cause."""

    def __init__(self, path: str, cause: BaseException) -> None:
        self.path = str(path)
        self.cause = cause
        reason = getattr(cause, "strerror", None) or str(cause)
        super().__init__(f"cannot write {self.path}: {reason}; what was written is intact, rerun to resume")


class SpendCapReached(RunAborted):
    """The next request could have taken the run's spend past ``--max-cost``: intake stopped (exit 5)."""


class EngineCrashed(RunAborted):
    """An unexpected exception ended one of the engine's tasks; names it and the record."""


class ServeError(OdieError):
    """A model server could not be started, or stopped unexpectedly."""


class EvalError(OdieError):
    """A predictions file cannot be scored."""


class TrainError(OdieError):
    """Training data or training settings are unusable."""


def exit_code(error: BaseException | None) -> int:
    """The exit code of a command or run that ended with ``error`` (None: it ended well).

    0 no error; 2 a usage, config or input error (``ConfigError``, ``InputError``,
    ``EvalError``, ``TrainError``); 3 the endpoint stopped the run (``EndpointStopped``);
    4 a local failure (``OutputError`` such as a full disk, ``EngineCrashed``, any other
    ``RunAborted``, an ``OSError`` or any exception that is not an ``OdieError``: an
    internal crash); 130 ``KeyboardInterrupt``; 1 any other ``OdieError`` (a request failed).
    """
    if error is None:
        return EXIT_OK
    if isinstance(error, KeyboardInterrupt):
        return signal_exit_code(2)
    if isinstance(error, (ConfigError, InputError, EvalError, TrainError)):
        return EXIT_USAGE
    if isinstance(error, EndpointStopped):
        return EXIT_ENDPOINT
    if isinstance(error, SpendCapReached):
        return EXIT_SPEND_CAP
    if isinstance(error, RunAborted) or not isinstance(error, OdieError):
        return EXIT_LOCAL
    return EXIT_FAILED_RECORDS


def signal_exit_code(signum: int) -> int:
    """The shell's exit code for a process stopped by signal ``signum``: 130 SIGINT, 143 SIGTERM."""
    return 128 + int(signum)


"""API keys: the one reader (from the environment, cleaned) and the one redaction of a key from text.

A key is never written in a config file or on the command line; it comes from an environment
variable, and whatever a server echoes back has it replaced by ``***`` before it reaches a log, an
output or an error file.
"""

from __future__ import annotations

import os

from ..exceptions import ConfigError


def clean_api_key(value: str | None, source: str) -> str | None:
    """The key with surrounding whitespace and control characters removed.

    A key saved with Windows line endings ends in ``\r``; that is stripped. A key
    holding any other character outside printable ASCII is refused (without
    echoing it), since it could never be sent as a header.
    """
    if value is None:
        return None
    key = value.strip("".join(map(chr, range(33))) + "\x7f")
    if any(not 33 <= ord(ch) <= 126 for ch in key):
        raise ConfigError(f"the API key in {source} holds a character that cannot be sent in a header")
    return key or None


def api_key_from_env(name: str | None, *, fallback: str | None = "OPENAI_API_KEY",
                     where: str = "--api-key-env") -> str | None:
    """The project's one key reader: the cleaned key in environment variable ``name``, which must be set.

    Unnamed, the key in ``fallback`` (``OPENAI_API_KEY``; None: no fallback) when that is set,
    else None. ``where`` names the setting in the error message. Every key goes through
    ``clean_api_key``.
    """
    if name is None:
        return clean_api_key(os.environ.get(fallback) or None, fallback) if fallback else None
    value = clean_api_key(os.environ.get(name), name)
    if not value:
        raise ConfigError(f"environment variable {name} (from {where}) is not set")
    return value


def redact(data: bytes, secret: bytes | None) -> bytes:
    """``data`` with every copy of ``secret`` (the API key) replaced by ``***``: what a server echoes
    back never reaches a log, an output or an error file."""
    if secret and secret in data:
        return data.replace(secret, b"***")
    return data

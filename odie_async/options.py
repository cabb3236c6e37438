"""Command-line option types and the engine settings they fill, shared by every command.

Each option means one thing in every command that takes it: ``number`` makes a
bad value a usage error (exit 2) before anything runs, and ``settings_from_args``
turns the engine's options into ``EngineSettings`` the same way everywhere.
"""

from __future__ import annotations

import argparse

from .engine.client import api_key_from_env
from .engine.settings import EngineSettings, check_number
from .exceptions import ConfigError


def number(kind, minimum: float, inclusive: bool = True):
    """An argparse type: a finite ``kind`` above (or at) ``minimum``, else a usage error (exit 2)."""
    def parse(text: str):
        try:
            value = kind(text)
            check_number(value, minimum, inclusive, "the value")
        except (ValueError, ConfigError) as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("the value ", "") if isinstance(exc, ConfigError)
                                             else f"{text!r} is not a valid {kind.__name__}") from None
        return value
    parse.__name__ = kind.__name__
    return parse


def settings_from_args(args, base_url: str, api_key: str | None = None) -> EngineSettings:
    """Engine settings from the command line."""
    return EngineSettings(
        base_url=base_url, api_key=api_key or api_key_from_env(args.api_key_env), concurrency=args.concurrency,
        rpm=args.rpm, tpm=args.tpm, max_attempts=args.max_attempts, timeout_s=args.timeout,
        drain_timeout_s=args.drain_timeout, max_retry_wait_s=args.max_retry_wait, adaptive=not args.no_adaptive,
    )

"""Command-line option types and the engine settings they fill, shared by every command.

Each option means one thing in every command that takes it: the strict value types
(``option_types``: ``number``, ``duration``, ``rate``, ``count``, paths) make a bad
value a usage error (exit 2) before anything runs, and ``settings_from_args`` turns
the engine's options into ``EngineSettings`` the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from .engine.keys import api_key_from_env
from .engine.settings import (AUTO_START, AUTO_WORKERS, DEFAULTS, EndpointConfig, EngineConfig, EngineSettings,  # noqa: F401
                              PoolEndpoint, build_settings)
from .exceptions import ConfigError
from .option_types import number  # noqa: F401  (the option types live in option_types; commands import it from here)
from .files import load_yaml
from .config_models import Section, validate

# engine-section keys and the option each one stands for
ENGINE_KEYS = {"concurrency": "concurrency", "rpm": "rpm", "tpm": "tpm", "max_attempts": "max_attempts",
                "timeout_s": "timeout", "drain_timeout_s": "drain_timeout", "stream": "stream",
                "max_cost": "max_cost", "prices_file": "prices", "price": "price", "cache": "cache"}
ENGINE_OPTIONS = tuple(ENGINE_KEYS.values())
_D = DEFAULTS["batch"]


class BatchConfig(Section):
    """What ``odie batch --config`` reads: generate's ``endpoint`` and ``engine`` sections, and a pool.
    Other sections of a generate config are left to ``odie generate``."""

    model_config = ConfigDict(extra="ignore", strict=True)
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    endpoints: list[PoolEndpoint] = Field(default_factory=list)
    engine: EngineConfig = Field(default_factory=EngineConfig)



def apply_config(args, defaults: dict, sections=()) -> None:
    """Fill options still at their defaults from ``args.config``; build ``args.pool`` from it and --endpoint.

    ``sections`` are the top-level keys a config may hold (a generate config's): any other key
    (``endpoits:``) is a mistake, refused with the file named."""
    if args.config:
        data = load_yaml(args.config, "batch config")
        unknown = [key for key in (data if isinstance(data, dict) else ()) if sections and key not in sections]
        if unknown:
            raise ConfigError(f"{args.config}: unknown key {unknown[0]!r} (known: {', '.join(sections)})")
        config = validate(BatchConfig, data, str(args.config))
        for key in config.engine.model_fields_set:
            if getattr(args, ENGINE_KEYS[key]) == defaults.get(ENGINE_KEYS[key]):
                setattr(args, ENGINE_KEYS[key], getattr(config.engine, key))
        for key in ("base_url", "model", "api_key_env"):
            if getattr(args, key) is None and getattr(config.endpoint, key):
                setattr(args, key, getattr(config.endpoint, key))
    # Endpoints named on the command line (--base-url among them, when there are others) take --rpm/--tpm each.
    urls = ([args.base_url] if args.base_url and args.endpoint else []) + list(args.endpoint or ())
    key = api_key_from_env(args.api_key_env) if urls else None
    pool = [PoolEndpoint.keyed(url, key, rpm=args.rpm, tpm=args.tpm) for url in urls]
    pool += [e.with_env_key(args.config) for e in config.endpoints] if args.config else []
    args.pool = pool
    if pool and not args.base_url:
        args.base_url = pool[0].base_url


def add_spend_arguments(parser, what: str = "records", default: float | None = _D["max_cost"],
                        after: str = "a rerun with a higher cap resumes") -> None:
    """``--max-cost``, ``--prices`` and ``--price``: the spending cap and the prices it counts at, the same
    in every command that sends paid requests (``what`` names what the cap stops taking, ``after`` what
    is left when it did)."""
    from .engine.spend import parse_price

    at_least = number(float, 0) if default is not None else number(float, 0, False)
    parser.add_argument("--max-cost", type=at_least, default=default, metavar="USD",
                        help=f"stop taking {what} before the spend could pass USD (exit 5; {after})"
                             + ("; 0: no cap" if default is not None else ""))
    parser.add_argument("--prices", default=None, metavar="FILE",
                        help="a price table in the shape of configs/prices.yaml, instead of the packaged one")
    parser.add_argument("--price", type=parse_price, default=None, metavar="IN,OUT",
                        help="one price for every model, USD per million input and output tokens")


def spend_overrides(args) -> dict:
    """The engine-section keys ``add_spend_arguments`` fills, for a config's ``engine:`` overrides."""
    return {"max_cost": args.max_cost, "prices_file": args.prices, "price": list(args.price) if args.price else None}


def parse_lora(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=PATH``, or a bare ``PATH`` named after its folder."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text.rstrip("/")).name, text
    if not name or not path:
        raise ConfigError(f"expected NAME=PATH (or a PATH), got {text!r}")
    return name, path


def settings_from_args(args, base_url: str, api_key: str | None = None) -> EngineSettings:
    """Engine settings from the command line (a pool from ``args.pool`` when there is one)."""
    pool = list(getattr(args, "pool", None) or [])
    return build_settings(
        base_url, api_key=api_key or api_key_from_env(args.api_key_env), concurrency=getattr(args, "concurrency", None),
        rpm=args.rpm, tpm=args.tpm, max_attempts=args.max_attempts, timeout_s=args.timeout,
        drain_timeout_s=args.drain_timeout, max_retry_wait_s=args.max_retry_wait, adaptive=not args.no_adaptive,
        endpoints=pool, max_outage_s=getattr(args, "max_outage", _D["max_outage_s"]),
        hedge_share=getattr(args, "hedge_share", _D["hedge_share"]),
        stream=getattr(args, "stream", False), max_cost=getattr(args, "max_cost", _D["max_cost"]),
        prices_file=getattr(args, "prices", None), price=getattr(args, "price", None),
        cache=getattr(args, "cache", None), metrics_port=getattr(args, "metrics_port", None),
    )

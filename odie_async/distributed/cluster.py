"""The Ray boundary: connecting, placing the budget actor and the shard workers, and Ray's errors.

Ray is imported only here (and only when a run asks for it), so the rest of
the package works without the ``ray`` extra. Ray's exceptions are translated
into the package's own at this boundary.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from pathlib import Path

import structlog

from ..exceptions import ConfigError, RunAborted
from .budget import Budget
from .worker import ShardWorker

log = structlog.get_logger(__name__)

NAMESPACE = "odie"
NAME_WAIT_S = 30.0


def import_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'odie-async[ray]'") from None
    return ray


def run_key(output: str | Path) -> str:
    """A short name for the run writing ``output`` (its actors are named after it)."""
    return hashlib.blake2b(str(Path(output).resolve()).encode(), digest_size=6).hexdigest()


def worker_name(key: str, index: int) -> str:
    """The Ray actor name of shard worker ``index`` (namespace ``odie``)."""
    return f"odie-{key}-worker-{index}"


def budget_name(key: str) -> str:
    """The Ray actor name of the run's budget actor (namespace ``odie``)."""
    return f"odie-{key}-budget"


@contextmanager
def connected(address: str):
    """Connect to Ray at ``address`` (``local``: a Ray started for the run, on loopback) for the block."""
    ray = import_ray()
    options = dict(namespace=NAMESPACE, configure_logging=False, log_to_driver=True)
    if address == "local":
        options |= dict(address="local", include_dashboard=False)
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RunAborted(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class Placement:
    """The budget actor and the shard workers of one run, placed on the cluster."""

    def __init__(self, ray, key: str, shards: int, rpm: float, tpm: float,
                 max_restarts: int = 3, worker_cpus: float = 1.0) -> None:
        self.ray = ray
        self.key = key
        budget = dict(num_cpus=0, max_restarts=0)
        self.budget = self._named(ray.remote(Budget), budget, budget_name(key), rpm, tpm)
        worker = dict(num_cpus=worker_cpus, max_restarts=max_restarts, max_concurrency=4, scheduling_strategy="SPREAD")
        # Workers look the budget actor up by name: a handle in their constructor's
        # arguments would live in the object store, which restarts depend on.
        self.workers = [self._named(ray.remote(ShardWorker), worker, worker_name(key, i), budget_name(key))
                        for i in range(shards)]

    def _named(self, cls, options: dict, name: str, *args):
        """Create actor ``name``; while a dead run's actor of that name is being cleaned up, wait."""
        deadline = time.monotonic() + NAME_WAIT_S
        while True:
            try:
                return cls.options(**options, name=name, namespace=NAMESPACE).remote(*args)
            except ValueError as exc:  # Ray: the name is taken
                if time.monotonic() > deadline:
                    raise RunAborted(f"Ray actor {name} still exists: another driver is running this output "
                                     f"({exc}); stop it first") from None
                time.sleep(1.0)

    def release(self) -> None:
        """Kill every actor of the run (after the workers returned, or when giving up)."""
        for actor in [*self.workers, self.budget]:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception as exc:  # already gone: nothing to release
                log.debug("actor already gone", error=str(exc))


def is_actor_death(exc: BaseException) -> bool:
    """Whether ``exc`` says a worker process died (Ray restarts it) rather than the run failing."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)

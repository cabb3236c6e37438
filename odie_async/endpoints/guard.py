"""The model server's guard: the first process of the server's group, which stops the group when
the process that started it dies.

vLLM runs as several processes (the API server, the engine core, its workers). ``VLLMServer``
starts this guard in a process group of its own, and the guard starts vLLM inside that group. While
its parent lives, the guard only waits: the parent stops the group itself (SIGTERM, then SIGKILL).
If the parent dies without doing so (kill -9, a crash, a SIGTERM that arrived while vLLM was still
compiling), the guard stops the whole group: SIGTERM, then SIGKILL after a grace. A death signal
(``PR_SET_PDEATHSIG``) cannot do this alone: it follows the *thread* that started the child, it
reaches one process only, and vLLM's API server answers SIGTERM by waiting for an engine that may
be compiling for minutes.

    python -m odie_async.endpoints.guard PARENT_PID GRACE_S -- ARGV...

The guard exits with the server's exit code (128 + N for a server ended by signal N).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..runtime import StopSignals

POLL_S = 0.5  # how often the guard looks for its parent
# The interpreter that runs this package, read once at import: the server's may be another one.
PYTHON = sys.executable


def guarded(parent_pid: int, grace_s: float, argv: list[str]) -> list[str]:
    """The command that runs ``argv`` under a guard watching ``parent_pid``."""
    return [PYTHON, "-m", "odie_async.endpoints.guard", str(parent_pid), str(grace_s), "--", *argv]


def watch(parent_pid: int, grace_s: float, argv: list[str], poll_s: float = POLL_S) -> int:
    """Run ``argv`` until it exits (its exit code) or ``parent_pid`` is gone (the group is stopped)."""
    # The parent's SIGTERM to the group reaches the guard too: it keeps watching until the server has
    # gone, so the parent's wait for it stays a wait for the server.
    with StopSignals(lambda _sig: None):
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        while True:
            try:
                return _code(child.wait(timeout=poll_s))
            except subprocess.TimeoutExpired:
                if os.getppid() != parent_pid:
                    return _stop_group(child, grace_s)


def _stop_group(child: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM the guard's group, give the server ``grace_s`` to leave, then SIGKILL what is left
    (the guard included: it is the last of the group)."""
    group = os.getpgrp()
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(group, signal.SIGKILL)
    return 137  # not reached: SIGKILL ends the guard with the group


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(args: list[str]) -> int:
    """``PARENT_PID GRACE_S -- ARGV...``"""
    if len(args) < 4 or args[2] != "--":
        raise SystemExit("usage: python -m odie_async.endpoints.guard PARENT_PID GRACE_S -- ARGV...")
    return watch(int(args[0]), float(args[1]), args[3:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

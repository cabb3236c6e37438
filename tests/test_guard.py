"""The model server's guard: a server outlives neither a stop nor the death of the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from odie_async.endpoints.guard import guarded

# A server like vLLM while it compiles: it ignores SIGTERM, and has a process of its own below it.
SERVER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
below = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {below.pid}")
time.sleep(600)
"""

# The process that starts the guard, as ``VLLMServer.start`` does, and is then killed.
STARTER = """
import os, subprocess, sys, time
from odie_async.endpoints.guard import guarded
proc = subprocess.Popen(guarded(os.getpid(), 1.0, [sys.executable, "-c", sys.argv[1], sys.argv[2]]),
                        start_new_session=True)
print(proc.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_killed_starter_leaves_no_server_behind(tmp_path):
    pids_file = tmp_path / "pids"
    starter = subprocess.Popen([sys.executable, "-c", STARTER, SERVER, str(pids_file)], stdout=subprocess.PIPE,
                               text=True)
    try:
        guard = int(starter.stdout.readline())
        assert wait_until(pids_file.exists) and wait_until(lambda: pids_file.read_text().count(" ") == 1)
        server, below = map(int, pids_file.read_text().split())
        assert alive(guard) and alive(server) and alive(below)
        starter.kill()  # kill -9: nothing of the starter's own runs to stop the server
        starter.wait()
        # The guard sees its parent gone within half a second; the server ignores SIGTERM, so the
        # SIGKILL after the guard's 1 s grace is what ends it.
        assert wait_until(lambda: not any(map(alive, (guard, server, below))))
    finally:
        starter.kill()
        for pid in _pids(pids_file):
            _kill(pid)


def test_the_guard_exits_with_the_servers_code_and_waits_for_it_through_a_stop(tmp_path):
    done = subprocess.run(guarded(os.getpid(), 1.0, [sys.executable, "-c", "raise SystemExit(3)"]), timeout=60)
    assert done.returncode == 3
    # A stop signals the whole group: the guard outlasts the server's own shutdown, then reports it.
    slow_stop = ("import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(7)))\n"
                 "print('up', flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen(guarded(os.getpid(), 1.0, [sys.executable, "-c", slow_stop]), stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 7 and time.monotonic() - started >= 0.9
    finally:
        _kill(proc.pid)


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

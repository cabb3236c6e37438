"""The contenders, their throwaway environments, and running one as a metered, pinned child process.

Each peer installs into its own venv under ``<odie cache>/bench-venvs/<name>``
(created on first use from ``requirements-<name>.txt`` beside this file, reused
while that file is unchanged); none of them is a dependency of odie_async.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from odie_async.paths import cache_dir

HERE = Path(__file__).resolve().parent
TASKSET = shutil.which("taskset")
STAMP = ".odie-requirements"


@dataclass(frozen=True)
class Contender:
    """A tool under test: its runner script, its environment, its output format and how it is set up."""

    name: str
    runner: str
    venv: str | None  # None: the repository's own interpreter
    fmt: str  # how harness.read_output reads its output
    setup: str  # one line for the table notes
    sequential: bool = False  # sends one request at a time whatever the concurrency
    packages: tuple[str, ...] = field(default_factory=tuple)  # distributions whose versions are reported

    @property
    def slug(self) -> str:
        """The name as a folder name."""
        return self.name.lower().replace(" ", "-")


CONTENDERS = [
    Contender("odie batch", "run_odie.py", None, "batch",
              "`odie batch --concurrency C --rpm R --tpm T --max-attempts 5 --timeout 30`", packages=("odie-async",)),
    Contender("curator", "run_curator.py", "curator", "jsonl",
              "`curator.LLM(backend=\"openai\", backend_params={base_url, max_concurrent_requests: C, "
              "max_requests_per_minute: R, max_tokens_per_minute: T, max_retries: 4, request_timeout: 30})`; "
              "no limit is given as 10^9", packages=("bespokelabs-curator",)),
    Contender("distilabel", "run_distilabel.py", "distilabel", "jsonl",
              "`Pipeline`: `LoadDataFromDicts >> TextGeneration(OpenAILLM(base_url, max_retries=4, timeout=30), "
              "input_batch_size=C)`, `run(use_cache=True)`; it has no RPM/TPM setting", packages=("distilabel", "openai")),
    Contender("LiteLLM", "run_litellm.py", "litellm", "jsonl",
              "`acompletion(api_base, num_retries=4, timeout=30)` under `asyncio.Semaphore(C)`; with limits a "
              "`Router` deployment with `rpm`/`tpm` and `enable_pre_call_checks`; no checkpoint", packages=("litellm",)),
    Contender("original approach", "run_original.py", "original", "json",
              "one `requests.post` at a time, no timeout, 20 s sleep after any failure, whole JSON output "
              "rewritten after each record, resume at `len(done)`", sequential=True, packages=("requests",)),
]


def venv_root() -> Path:
    """Where the peers' throwaway environments live (outside the repository)."""
    return cache_dir() / "bench-venvs"


def python_for(contender: Contender, root: Path | None = None) -> Path:
    """The interpreter that runs ``contender``, creating or updating its venv (in ``root``, else the cache) first."""
    if contender.venv is None:
        return Path(sys.executable)
    root = root or venv_root() / contender.venv
    requirements = HERE / f"requirements-{contender.venv}.txt"
    wanted = requirements.read_text()
    stamp = root / STAMP
    if not (stamp.exists() and stamp.read_text() == wanted):
        print(f"setting up {contender.name} in {root} (first run only) ...", file=sys.stderr, flush=True)
        if not (root / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        stamp.write_text(wanted)
    return root / "bin" / "python"


def versions(contender: Contender) -> dict[str, str]:
    """Installed versions of the contender's packages."""
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))")
    out = subprocess.run([str(python_for(contender)), "-c", code, *contender.packages],
                         capture_output=True, text=True, check=True).stdout
    return orjson.loads(out)


def environment(contender: Contender, state_dir: Path) -> dict[str, str]:
    """The child's environment: offline, no telemetry, quiet logs, tool caches inside ``state_dir``."""
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(state_dir / "hf"),
        "TELEMETRY_ENABLED": "false", "DO_NOT_TRACK": "1", "CURATOR_DISABLE_RICH_DISPLAY": "1",
        "CURATOR_CACHE_DIR": str(state_dir / "curator"), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DISTILABEL_LOG_LEVEL": "WARNING", "OPENAI_API_KEY": "sk-mock", "PYTHONUNBUFFERED": "1",
    })
    python = python_for(contender)
    # LiteLLM ships cl100k_base; tiktoken users would otherwise download it
    bundled = sorted(python.parent.parent.glob("lib/python*/site-packages/litellm/litellm_core_utils/tokenizers"))
    if bundled:
        env["TIKTOKEN_CACHE_DIR"] = str(bundled[0])
    return env


def pinned(cmd: list[str], core: int) -> list[str]:
    """Prefix ``cmd`` with a pin to ``core`` when taskset exists and there are 2+ cores."""
    return [TASKSET, "-c", str(core), *cmd] if TASKSET and (os.cpu_count() or 1) > 1 else cmd


@dataclass
class Outcome:
    """How one child run went."""

    exit_code: int | None
    wall_s: float
    cpu_s: float
    bench: dict | None  # the runner's BENCH line, when it got to print it
    capped: bool = False
    interrupted: bool = False
    killed: bool = False
    stop_s: float | None = None  # from SIGINT to exit
    stderr_tail: str = ""  # its last words, when something went wrong


class Child:
    """One contender run in its own process group (so that SIGINT reaches it as Ctrl-C would)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_prefix: Path) -> None:
        self.stdout_path = log_prefix.with_suffix(".stdout")
        self.start = time.perf_counter()
        with open(self.stdout_path, "wb") as out, open(log_prefix.with_suffix(".stderr"), "wb") as err:
            self.proc = subprocess.Popen(pinned(cmd, 0), env=env, stdout=out, stderr=err, start_new_session=True,
                                         preexec_fn=_default_sigint)
        self.outcome: Outcome | None = None
        self._sigint_at: float | None = None
        self._killed = False

    def poll(self) -> Outcome | None:
        """The outcome once the child has exited (reaped with its resource usage), else None."""
        if self.outcome is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.outcome = self._finish(status, usage)
        return self.outcome

    def interrupt(self) -> None:
        """SIGINT to the whole process group, as Ctrl-C in a terminal."""
        if self._sigint_at is None:
            self._sigint_at = time.perf_counter()
            self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._killed = True
        self._signal(signal.SIGKILL)

    def wait(self, cap_s: float, grace_s: float = 15.0) -> Outcome:
        """Wait for exit; at ``cap_s`` send SIGINT, and SIGKILL ``grace_s`` later."""
        capped = False
        while self.poll() is None:
            now = time.perf_counter() - self.start
            if now > cap_s and self._sigint_at is None:
                capped = True
                self.interrupt()
            if self._sigint_at is not None and time.perf_counter() - self._sigint_at > grace_s and not self._killed:
                self.kill()
            time.sleep(0.02)
        self.outcome.capped = capped
        return self.outcome

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _finish(self, status: int, usage) -> Outcome:
        end = time.perf_counter()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self._killed:  # reap what is left of the group
            self._signal(signal.SIGKILL)
        bench = None
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith("BENCH "):
                bench = orjson.loads(line[6:])
        lines = [x for x in self.stdout_path.with_suffix(".stderr").read_text(errors="replace").splitlines() if x.strip()]
        return Outcome(
            exit_code=self.proc.returncode, wall_s=end - self.start, cpu_s=usage.ru_utime + usage.ru_stime,
            bench=bench, interrupted=self._sigint_at is not None, killed=self._killed,
            stop_s=None if self._sigint_at is None else end - self._sigint_at,
            stderr_tail=lines[-1][:300] if lines and self.proc.returncode else "",
        )


def _default_sigint() -> None:
    # A harness started in the background (``cmd &``) inherits SIGINT ignored, and so
    # would every child: Python then installs no KeyboardInterrupt handler at all.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command(contender: Contender, args: dict) -> list[str]:
    """The runner's command line for these settings."""
    cmd = [str(python_for(contender)), str(HERE / contender.runner)]
    for key, value in args.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return cmd

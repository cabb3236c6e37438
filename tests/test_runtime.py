"""Stop signals and endpoint resolution, the two pieces every command shares."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from odie_async.endpoints.mock_server import MockServer
from odie_async.endpoints.resolve import MOCK, resolve_endpoint
from odie_async.engine.keys import api_key_from_env
from odie_async.exceptions import ConfigError
from odie_async.runtime import StopSignals



def test_stop_signals_in_a_loop_call_first_then_again_and_restore():
    calls = []

    async def main():
        with StopSignals(lambda s: calls.append(("stop", s)), lambda s: calls.append(("again", s))) as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.05)
        return signals

    previous = signal.getsignal(signal.SIGTERM)
    signals = asyncio.run(main())
    assert calls == [("stop", signal.SIGTERM), ("again", signal.SIGINT)]
    assert signals.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is previous


def test_stop_signals_without_a_loop_may_raise_and_ignore_the_rest():
    def interrupt(signum):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        with StopSignals(interrupt) as signals:
            os.kill(os.getpid(), signal.SIGINT)
    assert signals.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is previous
    calls = []
    with StopSignals(calls.append):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # no on_again: ignored, not the default KeyboardInterrupt
    assert calls == [signal.SIGTERM]


def test_keys_come_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("ODIE_TEST_KEY", "sk-test")
    monkeypatch.delenv("ODIE_MISSING_KEY", raising=False)
    assert api_key_from_env("ODIE_TEST_KEY") == "sk-test"
    assert api_key_from_env(None) is None
    assert api_key_from_env(None, fallback="ODIE_TEST_KEY") == "sk-test"
    with pytest.raises(ConfigError, match="ODIE_MISSING_KEY \\(from x.yaml: endpoint.api_key_env\\) is not set"):
        api_key_from_env("ODIE_MISSING_KEY", where="x.yaml: endpoint.api_key_env")


def test_a_url_without_a_model_finds_it_at_models():
    async def main():
        async with MockServer() as server:
            async with resolve_endpoint(server.base_url, None, "k", discover=True) as found:
                pass
            async with resolve_endpoint(server.base_url, "chosen") as given:
                pass
            return server.base_url, found, given

    base_url, found, given = asyncio.run(main())
    assert (found.base_url, found.api_key) == (base_url, "k") and found.model
    assert given.model == "chosen"


def test_an_endpoint_that_does_not_answer_is_a_config_error():
    with pytest.raises(ConfigError, match="/models did not answer"):
        with resolve_endpoint("http://127.0.0.1:9/v1", discover=True):
            pass


def test_the_mock_runs_for_the_scope_and_only_in_a_loop():
    import urllib.request

    async def main():
        async with resolve_endpoint(MOCK, mock_responder=lambda body: "hello") as endpoint:
            url = endpoint.base_url
            status = await asyncio.to_thread(lambda: urllib.request.urlopen(url + "/models", timeout=5).status)
        return endpoint, url, status

    endpoint, url, status = asyncio.run(main())
    assert status == 200
    assert endpoint.model == "mock-model" and url.startswith("http://127.0.0.1:")
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/models", timeout=2)
    with pytest.raises(ConfigError, match="async with"):
        with resolve_endpoint(MOCK):
            pass

"""Lanes of an endpoint pool: breaker transitions, latency model, routing by capacity, server load."""

from odie_async.engine.lanes import CLOSED, HALF_OPEN, OPEN, Lane, LaneBreaker, LatencyModel, Router
from odie_async.engine.lane_control import FlowControl
from odie_async.engine.server_load import ServerLoad, parse_metrics
from odie_async.engine.settings import EngineSettings, PoolEndpoint
from odie_async.engine.stats import RunStats


def _lane(name, concurrency=10, weight=1.0, rpm=0):
    settings = EngineSettings("http://127.0.0.1", concurrency=concurrency, rpm=rpm, learn_limits=False)
    flow = FlowControl(settings, RunStats())
    return Lane(PoolEndpoint.keyed(f"http://127.0.0.1/{name}", name=name, weight=weight), client=None, flow=flow)


def test_breaker_opens_on_a_failure_streak_probes_once_and_closes_on_success():
    breaker = LaneBreaker(consecutive=3, cooldown_s=2.0)
    for t in range(3):
        assert breaker.allows(t)
        breaker.record(False, t)
    assert breaker.state == OPEN and not breaker.allows(3.0)
    assert breaker.allows(4.1) and breaker.state == HALF_OPEN
    breaker.on_send()
    assert not breaker.allows(4.2), "half-open lets exactly one probe through"
    breaker.record(True, 4.5)
    assert breaker.state == CLOSED and breaker.allows(4.6)
    assert [s for _, s in breaker.transitions] == [OPEN, HALF_OPEN, CLOSED]


def test_a_failed_probe_doubles_the_cooldown():
    breaker = LaneBreaker(consecutive=1, cooldown_s=1.0)
    breaker.record(False, 0.0)
    assert breaker.reopens_in(0.0) == 1.0
    assert breaker.allows(1.0)
    breaker.on_send()
    breaker.record(False, 1.0)
    assert breaker.state == OPEN and breaker.reopens_in(1.0) == 2.0


def test_breaker_judges_a_window_not_one_unlucky_streak():
    breaker = LaneBreaker(window=20, threshold=0.8, min_samples=10, consecutive=8)
    outcomes = [False, True] * 30  # 50 % failures, never 8 in a row
    for t, ok in enumerate(outcomes):
        breaker.record(ok, t)
    assert breaker.state == CLOSED


def test_latency_model_scales_with_max_tokens_and_bounds_the_timeout():
    model = LatencyModel(min_samples=5)
    assert model.timeout(100, factor=3, floor_s=1, ceiling_s=120) == 120  # no samples: the ceiling
    for _ in range(20):
        model.observe(1.0, 100)  # 10 ms per token
    assert abs(model.expected(100) - 1.0) < 1e-9
    assert abs(model.expected(400) - 4.0) < 1e-9
    assert model.timeout(400, factor=3, floor_s=1, ceiling_s=120) == 12.0
    assert model.timeout(1, factor=3, floor_s=5, ceiling_s=120) == 5
    assert model.timeout(100_000, factor=3, floor_s=1, ceiling_s=120) == 120


def test_router_picks_least_load_relative_to_capacity_and_weight():
    small, big = _lane("small", concurrency=10), _lane("big", concurrency=40)
    router = Router([small, big])
    small.outstanding, big.outstanding = 3, 10  # 0.3 vs 0.25
    assert router.pick(0.0) is big
    big.outstanding = 14  # 0.35
    assert router.pick(0.0) is small
    heavy = _lane("heavy", concurrency=10, weight=4.0)
    heavy.outstanding = 10  # 10 / 40 = 0.25
    assert Router([small, heavy]).pick(0.0) is heavy


def test_router_follows_request_budgets():
    slow, fast = _lane("slow", 100, rpm=600), _lane("fast", 100, rpm=2400)  # 10 and 40 requests/s
    router = Router([slow, fast])
    slow.outstanding, fast.outstanding = 5, 15  # 0.5 s vs 0.375 s of work
    assert router.pick(0.0) is fast
    fast.outstanding = 25  # 0.625 s
    assert router.pick(0.0) is slow


def test_router_skips_open_lanes_and_reports_all_open():
    a, b = _lane("a"), _lane("b")
    for lane in (a, b):
        lane.breaker = LaneBreaker(consecutive=1, cooldown_s=5.0)
    router = Router([a, b])
    a.breaker.record(False, 0.0)
    assert router.pick(0.1) is b
    b.breaker.record(False, 0.0)
    assert router.pick(0.1) is None and router.all_open(0.1)
    assert abs(router.next_reopen(0.1) - 4.9) < 1e-9


def test_router_avoids_a_lane_only_when_there_is_another():
    a, b = _lane("a"), _lane("b")
    a.outstanding, b.outstanding = 0, 5
    router = Router([a, b])
    assert router.pick(0.0, avoid=a) is b
    assert Router([a]).pick(0.0, avoid=a) is a


VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 128.0
vllm:num_requests_waiting{engine="0",model_name="m"} 40.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:prompt_tokens_total{model_name="m"} 12345.0
"""


def test_parse_vllm_and_sglang_metrics():
    assert parse_metrics(VLLM_METRICS) == {"running": 128.0, "waiting": 40.0, "cache": 0.5}
    sglang = "sglang:num_running_reqs{a=\"b\"} 7\nsglang:num_queue_reqs 3\nsglang:token_usage 0.2\n"
    assert parse_metrics(sglang) == {"running": 7.0, "waiting": 3.0, "cache": 0.2}
    assert parse_metrics("# nothing here\nother_metric 1\n") == {}


def test_server_load_caps_in_flight_at_running_plus_a_short_queue():
    load = ServerLoad(queue_margin=0.1, min_margin=2)
    load.update(VLLM_METRICS)
    assert load.available and load.target() == 128 + 12
    load.update(VLLM_METRICS.replace("40.0", "0.0"))
    assert load.target() is None, "no queue: the gate may grow"
    load.update(None)
    assert not load.available and load.target() is None


def _vllm(running: float, waiting: float) -> str:
    return (f'vllm:num_requests_running{{model_name="m"}} {running}\n'
            f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\nvllm:kv_cache_usage_perc{{model_name="m"}} 0.5\n')


def test_a_server_that_has_queued_is_not_grown_past_what_it_runs():
    """At capacity a reading may show no queue for a moment: that is no room for a quarter more."""
    load = ServerLoad(queue_margin=0.1, min_margin=2)
    load.update(_vllm(32, 0))
    assert load.ceiling() is None, "never queued: its capacity is unknown, the gate may grow"
    load.update(_vllm(32, 9))
    assert load.target() == 32 + 3 and load.ceiling() == 35
    load.update(_vllm(32, 0))
    assert load.target() is None and load.ceiling() == 35
    load.update(_vllm(40, 0))
    assert load.ceiling() == 40 + 4, "it ran more: the ceiling rises with it"

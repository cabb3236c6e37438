"""Shared helpers of the pipeline tests: a three-task seed file, configs, a mock server in a thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import orjson
import yaml

from odie_async.endpoints.mock_server import MockServer, MockSettings
from odie_async.paths import config_dir
from odie_async.pipeline.config import from_dict
from odie_async.pipeline.mock_responder import PipelineResponder
from odie_async.pipeline.prompts import Prompts

SEEDS = [
    {
        "id": "t1", "category": "fixed header", "domain": "local news",
        "instruction": "Extract the name, opening year and seating capacity of each venue mentioned in the article.",
        "text": "The city council reviewed three venues on Monday. The Harbor Hall opened in 1998 and seats 1,200 "
                "people. The Elm Street Theatre, which opened in 1955, seats 430. The newest, Northgate Arena, "
                "opened in 2019 with room for 8,500 spectators.",
        "table": "| Name | Opening Year | Seating Capacity |\n| --- | --- | --- |\n| Harbor Hall | 1998 | 1,200 |\n"
                 "| Elm Street Theatre | 1955 | 430 |\n| Northgate Arena | 2019 | 8,500 |",
        "explanation": "The instruction asks for three attributes of each venue: its name, the year it opened and "
                       "how many people it seats. The article gives all three for Harbor Hall, Elm Street Theatre "
                       "and Northgate Arena.",
    },
    {
        "id": "t2", "category": "fixed header", "domain": "cooking",
        "instruction": "List every ingredient in the recipe with its quantity and unit.",
        "text": "To make the flatbread, mix 500 grams of flour with 2 teaspoons of salt. Add 300 millilitres of "
                "warm water and 3 tablespoons of olive oil, then knead for ten minutes.",
        "table": "| Ingredient | Quantity | Unit |\n| --- | --- | --- |\n| flour | 500 | grams |\n| salt | 2 | teaspoons |\n"
                 "| warm water | 300 | millilitres |\n| olive oil | 3 | tablespoons |",
        "explanation": "The instruction wants each ingredient with its amount split into a number and a unit. The "
                       "recipe names four ingredients, each with a quantity and a unit.",
    },
    {
        "id": "t3", "category": "open header", "domain": "sports",
        "instruction": "Summarize the key results of the race in a table.",
        "text": "Lena Park won the city marathon on Sunday in 2:24:10, ahead of Rosa Diaz (2:25:02) and Kim Obi "
                "(2:26:45). Park, who runs for the Riverside club, also set a course record.",
        "table": "| Place | Runner | Time | Club |\n| --- | --- | --- | --- |\n| 1 | Lena Park | 2:24:10 | Riverside |\n"
                 "| 2 | Rosa Diaz | 2:25:02 | N/A |\n| 3 | Kim Obi | 2:26:45 | N/A |",
        "explanation": "The instruction asks for the key results without naming columns. The race results are the "
                       "finishing place, the runner, the time and the club where the text gives one.",
    },
]


def write_seeds(folder: Path) -> Path:
    """Write the three seed tasks as JSONL; return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "seed_tasks.jsonl"
    path.write_bytes(b"".join(orjson.dumps(seed) + b"\n" for seed in SEEDS))
    return path


def config_data(tmp: Path, base_url: str = "mock", structured: str = "off", records: int = 24, **extra) -> dict:
    """A small pipeline config as a dict (the repo's prompts, the three seeds)."""
    data = {
        "endpoint": {"base_url": base_url, "model": "mock-model", "structured": structured},
        "engine": {"concurrency": 8, "max_attempts": 2, "timeout_s": 20, "drain_timeout_s": 20},
        "run": {"records": records, "open_share": 0.5, "variants": ["plain", "cot"]},
        "seeds": str(write_seeds(tmp)),
        "prompts": str(config_dir() / "prompts"),
        "stages": {"instructions": {"per_call": 10, "shots": 2, "parallel_calls": 2}, "texts": {"shots": 1},
                   "tables": {"shots": 1}, "tables_cot": {"shots": 1}},
        "scorer": {"kind": "llm"},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return data


def make_config(tmp: Path, **kw):
    """A validated ``PipelineConfig`` for the tests."""
    return from_dict(config_data(tmp, **kw), "test-config")


def write_config(tmp: Path, **kw) -> Path:
    """The test config as a YAML file."""
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config_data(tmp, **kw)), encoding="utf-8")
    return path


def responder() -> PipelineResponder:
    """The mock teacher on the repo's prompts."""
    return PipelineResponder(Prompts(config_dir() / "prompts"))


class ThreadedMock:
    """The mock server with the pipeline responder on its own thread and loop (for subprocess runs)."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.server = MockServer(settings=MockSettings(latency_ms=latency_ms), responder=responder(), record_bodies=True)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self.server:
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "ThreadedMock":
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def bodies(self) -> list[bytes]:
        """Every completion request body received so far."""
        return list(self.server.state.bodies)

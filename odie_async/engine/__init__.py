"""The engine: an OpenAI Batch API input file streamed through rate-limited, concurrent,
retried, checkpointed requests. Imports nothing from pipeline, model, evaluation or cli."""

from .checkpoint import Result, ResultStore
from .core import CHAT_PATH, Engine, EngineSettings

__all__ = ["CHAT_PATH", "Engine", "EngineSettings", "Result", "ResultStore"]

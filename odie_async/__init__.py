"""odie_async: bulk instruction-data generation for on-demand information extraction.

The Python API (each with an async form to await and a sync form that also works
inside a running event loop, as in a notebook cell)::

    import odie_async
    results = odie_async.run_batch([{"model": "m", "messages": [...]}], base_url="http://127.0.0.1:8000/v1")
    summary = odie_async.generate("mock", "runs/demo", limit=10)       # odie generate
    scores = odie_async.evaluate("runs/loop/pred.json")                # odie eval
"""

from .api import aevaluate, agenerate, arun_batch, evaluate, generate, run_batch
from .exceptions import OdieError

__version__ = "0.1.0"

__all__ = [
    "OdieError",
    "__version__",
    # `odie generate`
    "agenerate",
    "generate",
    # `odie eval`
    "aevaluate",
    "evaluate",
    # `odie batch`
    "arun_batch",
    "run_batch",
]

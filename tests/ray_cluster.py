"""A local Ray cluster of two CPUs for a test module, and ``odie batch --ray`` drivers against it."""

import subprocess
import sys

import pytest

ODIE = [sys.executable, "-m", "odie_async"]


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-CPU Ray cluster started by this process, stopped after the module."""
    ray = pytest.importorskip("ray")
    from odie_async.distributed.cluster import NAMESPACE

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE,
             configure_logging=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def driver(address, tmp_path, url, *extra, ray=True):
    """``odie batch in.jsonl -o out.jsonl`` (with ``--ray ADDRESS --workers 2`` unless ``ray`` is False)."""
    cmd = ODIE + ["batch", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]
    cmd += ["--base-url", url] if url else []
    cmd += ["--ray", address, "--workers", "2"] if ray else []
    return subprocess.Popen(cmd + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)

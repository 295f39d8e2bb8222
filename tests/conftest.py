"""Session fixtures shared by all tests. Keep it small: one fixture per shared resource."""

from __future__ import annotations

import os
from collections.abc import Iterator

# No network here: Hugging Face libraries must fail fast instead of trying the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
# Under pytest-xdist each worker (and every server or CLI process it starts) computes on one
# thread: two workers with two BLAS threads each on two cores spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import pytest  # noqa: E402

from shared.home import Home  # noqa: E402


@pytest.fixture(scope="session")
def lwm_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """One cache home per test session, so the tiny model is built once and then reused."""
    return Home(tmp_path_factory.mktemp("lwm-home"))


# Under pytest-xdist the files that start a Ray cluster (Flower's simulation engine) take
# turns: two Ray clusters starting at once on two busy cores timed out waiting for their GCS
# (seen in CI). A module of one of these files holds an exclusive file lock, shared by the
# workers of one run, from its first fixture to its last test.
RAY_FILES = ("test_simulate.py", "test_federation.py", "test_federation_quality.py")


@pytest.fixture(scope="module", autouse=True)
def _one_ray_cluster_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    if request.path.name not in RAY_FILES:
        yield
        return
    import fcntl

    lock = tmp_path_factory.getbasetemp().parent / "ray.lock"  # one per run, all workers
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

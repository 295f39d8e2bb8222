"""Session fixtures shared by all tests. Keep it small: one fixture per shared resource."""

from __future__ import annotations

import os

# No network here: Hugging Face libraries must fail fast instead of trying the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
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


@pytest.fixture(scope="module")
def tiny(lwm_home: Home):  # type: ignore[no-untyped-def]
    """The tiny model (``LoadedModel``), loaded afresh for each test module (a module may wrap
    or change it), computing on one thread: two shared cores, where spinning threads cost far
    more than they give."""
    import torch

    from shared.models import load_causal_lm

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_causal_lm("tiny", lwm_home)
    torch.set_num_threads(before)

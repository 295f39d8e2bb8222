"""Devices and dtypes (issue 15 item 4): one ``Placement`` per command, checked before any
model loads; a model's identity and every spec stay float32, whatever the placement."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from client.finetune import FinetuneConfig, finetune_lora
from client.specs import SpecMaker
from shared.errors import InvalidInput, ModelUnavailable
from shared.home import Home
from shared.models import load_causal_lm
from shared.models.device import CPU, Placement, resolve
from shared.privacy import PrivacyBudget
from shared.spec.defaults import default_schema

BF16 = Placement("cpu", "bfloat16")
TEXTS = [
    f"Open the file number {i}, read its lines and return them as a list of strings."
    for i in range(12)
]


@pytest.mark.parametrize(
    ("device", "dtype", "needle"),
    [
        ("tpu", None, "--device 'tpu': use one of auto, cpu, cuda, mps"),
        ("cpu:0", None, "--device 'cpu:0'"),
        ("cpu", "float64", "--dtype 'float64': use one of float32, bfloat16, float16"),
    ],
)
def test_unknown_names_are_refused(device: str, dtype: str | None, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        resolve(device, dtype)


def test_auto_takes_the_best_device_here_in_float32() -> None:
    chosen = resolve("auto")

    mps = torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert chosen == Placement(expected, "float32")
    assert resolve("cpu", "bfloat16") == BF16 and BF16.for_specs() == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_this_machine_lacks_is_one_line_before_any_model_loads() -> None:
    with pytest.raises(ModelUnavailable, match="--device cuda: torch sees no such CUDA device"):
        resolve("cuda")


def test_a_bfloat16_load_keeps_the_float32_identity(lwm_home: Home, tmp_path: Path) -> None:
    fp32 = load_causal_lm("tiny", lwm_home)
    shutil.copytree(fp32.path, tmp_path / "my-tiny")

    half = load_causal_lm("tiny", lwm_home, BF16)
    folder = load_causal_lm(str(tmp_path / "my-tiny"), lwm_home, BF16)

    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    assert half.ref == fp32.ref and folder.ref.sha256 == fp32.ref.sha256


def test_specs_are_float32_whatever_the_dtype_asked(lwm_home: Home) -> None:
    schema = default_schema(lwm_home, kinds=("pave",), default_kind="pave")
    budget = PrivacyBudget(4.0)

    asked_bf16 = SpecMaker(schema, lwm_home, BF16).make(TEXTS, "pave", budget, noise_seed=3)
    plain = SpecMaker(schema, lwm_home).make(TEXTS, "pave", budget, noise_seed=3)

    np.testing.assert_array_equal(asked_bf16.vector, plain.vector)


def test_training_on_a_bfloat16_base_keeps_float32_lora_weights(lwm_home: Home, tmp_path):
    from safetensors import safe_open

    base = load_causal_lm("tiny", lwm_home, BF16)

    trained = finetune_lora(TEXTS, base, FinetuneConfig(steps=2, batch_size=4), tmp_path / "a")

    with safe_open(str(trained.adapter_dir / "adapter_model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(name).dtype for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {torch.float32} and np.isfinite(trained.losses).all()


def test_scoring_precision_names_are_checked_and_auto_follows_the_hardware() -> None:
    from shared.models.device import native_bf16, scoring_precision

    assert scoring_precision("float32") == "float32"
    assert scoring_precision("bfloat16") == "bfloat16"
    assert scoring_precision("auto") == ("bfloat16" if native_bf16("cpu") else "float32")
    assert scoring_precision("auto", "mps") == "float32"
    with pytest.raises(InvalidInput, match="--score-precision 'float16': use one of auto"):
        scoring_precision("float16")

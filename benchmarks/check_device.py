"""Exercise the GPU path end to end where there is one: ``--device cuda`` as the CLI runs it.

CI has no GPU, so this script is the GPU check (README "Devices"): on a machine where torch
sees CUDA it loads ``tiny`` on the GPU in float32 and bfloat16, fine-tunes a LoRA with
DP-SGD (opacus) on the GPU, makes a PAVE spec on the GPU and compares it with the CPU's
(float32 both: cosine ~1, not bit-equal, since GPU reductions sum in another order), and
scores and generates with the trained adapter. Without CUDA it prints why and exits 0;
``--device cpu`` runs the same checks on the CPU (a dry run of this script).

    .venv/bin/python benchmarks/check_device.py [--home DIR] [--device cuda|cuda:1|cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.home import Home

TEXTS = [
    f"Open the file number {i}, read its lines and return them as a list of strings."
    for i in range(32)
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="lwm home (default: a temporary one)")
    parser.add_argument("--device", default="cuda", help="the device to check (cuda, cuda:1)")
    args = parser.parse_args()
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"skipped: torch {torch.__version__} sees no CUDA device here")
        return 0
    with tempfile.TemporaryDirectory(prefix="lwm-check-device-") as tmp:
        return check(Path(args.home or tmp), args.device, Path(tmp))


def check(home_dir: Path, device: str, tmp: Path) -> int:
    import numpy as np

    from client.finetune import FinetuneConfig, finetune_lora, perplexity
    from client.specs import SpecMaker
    from shared.home import Home
    from shared.models import load_causal_lm
    from shared.models.device import resolve
    from shared.privacy import PrivacyBudget
    from shared.spec.defaults import default_schema

    home = Home(home_dir)
    started = time.perf_counter()
    for dtype in ("float32", "bfloat16"):
        placement = resolve(device, dtype)
        base = load_causal_lm("tiny", home, placement)
        weight = next(base.model.parameters())
        assert weight.device.type == device.partition(":")[0], weight.device
        assert str(weight.dtype) == f"torch.{dtype}", weight.dtype
        config = FinetuneConfig(steps=5, batch_size=8, dp_epsilon=8.0)
        trained = finetune_lora(TEXTS, base, config, tmp / f"adapter-{dtype}")
        print(f"{dtype}: DP-SGD on {device}: epsilon {trained.report.epsilon:.2f}, ", end="")
        print(f"losses {[round(x, 3) for x in trained.losses]}")
    base = load_causal_lm("tiny", home, resolve(device))
    score = perplexity(base.model, base.tokenizer, TEXTS)
    print(f"perplexity of the base on {device}: {score:.1f}")
    schema = default_schema(home, kinds=("pave",), default_kind="pave")
    budget = PrivacyBudget(4.0)
    on_gpu = SpecMaker(schema, home, resolve(device, "bfloat16")).make(
        TEXTS, "pave", budget, noise_seed=1
    )
    on_cpu = SpecMaker(schema, home).make(TEXTS, "pave", budget, noise_seed=1)
    a, b = on_gpu.vector.astype(np.float64), on_cpu.vector.astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    print(f"PAVE spec on {device} (asked bfloat16, made float32) vs CPU: cosine {cosine:.6f}")
    if cosine < 0.99:
        print("FAILED: the GPU spec is not comparable with the CPU one")
        return 1
    check_learnware(home, tmp / "adapter-float32", device)
    print(f"ok: {device} end to end in {time.perf_counter() - started:.1f} s")
    return 0


def check_learnware(home: Home, adapter: Path, device: str) -> None:
    """Score and generate with the adapter on the GPU, as ``lwm evaluate/generate`` do."""
    from peft import PeftModel

    from client.evaluate import evaluate
    from client.run import LoadedLearnware, generate
    from shared.data.records import Record
    from shared.models import LocalModel, load_causal_lm
    from shared.models.device import resolve

    base = load_causal_lm("tiny", home, resolve(device))
    model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    assert next(model.parameters()).device.type == device.partition(":")[0]
    local = LocalModel("tiny", base.ref)
    loaded = LoadedLearnware(model, base.tokenizer, None, adapter, local)  # type: ignore[arg-type]
    result = evaluate(loaded, [Record(text=t) for t in TEXTS[:8]], with_base=True)
    print(f"evaluate on {device}: perplexity {result.learnware.perplexity:.1f}", end="")
    print(f" (base {result.base.perplexity:.1f})" if result.base else "")
    print(f"generate on {device}: {generate(loaded, TEXTS[0][:20], 8)!r}")


if __name__ == "__main__":
    sys.exit(main())

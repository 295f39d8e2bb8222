"""The market's checker on real packages: a real tiny-model LoRA, a real RKME spec, signed.

Bad packages are made the way an attacker would: edit one part, then re-package and sign it
properly (``rebuild_learnware``), so each test reaches the check it is about.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builders import (
    DELETE,
    build_learnware,
    edit_adapter_config,
    edit_adapter_weights,
    flip_byte,
    random_rkme_spec,
    rebuild_learnware,
    rkme_schema,
    train_lora_adapter,
    write_raw_spec,
    write_specs,
)
from processes import child_pids, is_alive, is_confined, wait_for

from server.checker import AcceptedBase, Checker, Judgment, check_static, describe_base_models
from server.records import Status
from server.sandbox import SmokeLimits
from server.smoke import run_smoke, smoke_command
from shared import signing
from shared.errors import (
    IntegrityError,
    InvalidInput,
    LwmError,
    ModelUnavailable,
    ResourceExhausted,
    SchemaMismatch,
    SpecError,
)
from shared.home import Home
from shared.learnware import Manifest, PackageLimits
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, SIGNATURE, SPEC
from shared.models import ModelRef, model_ref
from shared.spec.schema import MarketSchema

V_PROJ = "base_model.model.model.layers.0.self_attn.v_proj"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Kit:
    """Everything a test needs; ``package`` is shared, so tests copy before they edit."""

    home: Home
    market: MarketSchema
    bases: dict[str, AcceptedBase]
    private: signing.Ed25519PrivateKey
    public: signing.Ed25519PublicKey
    adapter: Path
    spec: Path
    package: Path

    def checker(self, **kwargs: Any) -> Checker:
        return Checker(self.market, self.bases, self.home, PackageLimits(), **kwargs)

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_json((self.package / MANIFEST).read_bytes())


@pytest.fixture(scope="module")
def kit(lwm_home: Home, tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("checker")
    market = MarketSchema(rkme=rkme_schema(lwm_home))
    private, public = signing.generate_keypair()
    adapter = train_lora_adapter(lwm_home, root / "adapter", steps=1)
    assert market.rkme is not None
    spec = write_specs(root / "spec.safetensors", [random_rkme_spec(market.rkme)])
    base = model_ref("tiny", lwm_home)
    package = build_learnware(
        root / "good", adapter=adapter, spec_file=spec, base=base, private_key=private
    )
    bases = describe_base_models(["tiny"], lwm_home)
    return Kit(lwm_home, market, bases, private, public, adapter, spec, package)


def copy_package(kit: Kit, tmp_path: Path) -> Path:
    return Path(shutil.copytree(kit.package, tmp_path / "copy"))


def assert_rejected(judgment: Judgment, error: type[LwmError], pattern: str) -> None:
    assert judgment.status is Status.REJECTED, judgment
    assert isinstance(judgment.error, error), judgment.error
    assert re.search(pattern, judgment.reason), judgment.reason
    assert "\n" not in judgment.reason


# ---------------------------------------------------------------- accepted


def test_good_package_is_usable_after_a_real_smoke_run(kit: Kit) -> None:
    checker = kit.checker(smoke_timeout_s=120)

    start = time.monotonic()
    judgment = checker.check(kit.package, signing.public_key_bytes(kit.public))
    wall = time.monotonic() - start

    assert judgment.status is Status.USABLE, judgment.reason
    assert judgment.reason == "" and judgment.error is None
    assert judgment.manifest == kit.manifest
    assert [s.kind for s in judgment.specs] == ["rkme"]
    assert judgment.smoke is not None and len(judgment.smoke.tokens) == 4
    print(f"\ncheck with smoke run: {wall:.2f} s (subprocess {judgment.smoke.seconds:.2f} s)")


def test_static_result_names_the_lora_modules_and_rank(kit: Kit) -> None:
    result = check_static(kit.package, kit.market, kit.bases, PackageLimits(), kit.public)

    assert result.rank == 4
    assert result.signer_key_id == signing.key_id(kit.public)
    assert len(result.lora_modules) == 8  # q_proj and v_proj of 4 layers
    assert "model.layers.3.self_attn.v_proj" in result.lora_modules
    assert result.base.ref == kit.manifest.base_model


def test_the_two_stages_the_market_runs_apart_make_one_judgment(kit: Kit) -> None:
    checker = kit.checker(run_smoke=False)

    static = checker.check_static(kit.package, kit.public)
    judgment = checker.judge(kit.package, static)

    assert judgment.status is Status.USABLE and judgment.manifest == static.manifest
    assert [s.kind for s in judgment.specs] == [s.kind for s in static.specs] == ["rkme"]
    assert static.spec_bytes == (kit.package / SPEC).read_bytes()  # stored as received


def test_static_checks_alone_are_fast(kit: Kit) -> None:
    checker = kit.checker(run_smoke=False)

    judgment = checker.check(kit.package, kit.public)

    assert judgment.status is Status.USABLE and judgment.smoke is None
    assert judgment.seconds < 2.0


def test_dora_adapter_passes_the_static_checks(kit: Kit, tmp_path: Path) -> None:
    adapter = train_lora_adapter(kit.home, tmp_path / "dora", steps=0, use_dora=True)
    package = build_learnware(
        tmp_path / "lw",
        adapter=adapter,
        spec_file=kit.spec,
        base=kit.manifest.base_model,
        private_key=kit.private,
    )

    judgment = kit.checker(run_smoke=False).check(package, kit.public)

    assert judgment.status is Status.USABLE, judgment.reason


def test_an_unknown_config_option_passes_while_it_is_off(kit: Kit, tmp_path: Path) -> None:
    config = edit_adapter_config(
        kit.package / ADAPTER_CONFIG, tmp_path / "c.json", future_option=None
    )
    package = rebuild_learnware(kit.package, tmp_path / "lw", kit.private, config=config)

    judgment = kit.checker(run_smoke=False).check(package, kit.public)

    assert judgment.status is Status.USABLE, judgment.reason


def test_base_model_info_records_linear_and_embedding_shapes(kit: Kit) -> None:
    info = kit.bases[kit.manifest.base_model.model_id]

    assert info.name == "tiny"
    assert info.module_shapes["model.layers.0.self_attn.v_proj"] == (32, 64)  # 2 KV heads
    assert info.module_shapes["lm_head"] == (2048, 64)
    assert info.embedding_shapes == {"model.embed_tokens": (64, 2048)}


# ---------------------------------------------------------------- static rejections

Edit = Callable[[Kit, Path], Path]  # (kit, tmp_path) -> a correctly signed, bad package


def with_weights(edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Edit:
    def make(kit: Kit, tmp: Path) -> Path:
        weights = edit_adapter_weights(kit.package / ADAPTER_WEIGHTS, tmp / "w.safetensors", edit)
        return rebuild_learnware(kit.package, tmp / "lw", kit.private, weights=weights)

    return make


def with_config(**changes: Any) -> Edit:
    def make(kit: Kit, tmp: Path) -> Path:
        config = edit_adapter_config(kit.package / ADAPTER_CONFIG, tmp / "c.json", **changes)
        return rebuild_learnware(kit.package, tmp / "lw", kit.private, config=config)

    return make


def with_manifest(**changes: Any) -> Edit:
    def make(kit: Kit, tmp: Path) -> Path:
        manifest = replace(kit.manifest, **changes)
        return rebuild_learnware(kit.package, tmp / "lw", kit.private, manifest=manifest)

    return make


def with_spec_file(write: Callable[[Kit, Path], Path]) -> Edit:
    """Package a new spec file with a manifest that describes it (so only the spec is bad)."""

    def make(kit: Kit, tmp: Path) -> Path:
        spec = write(kit, tmp / "spec.safetensors")
        base = kit.manifest.base_model
        return build_learnware(
            tmp / "lw", adapter=kit.adapter, spec_file=spec, base=base, private_key=kit.private
        )

    return make


def with_raw_spec(write: Callable[[Kit, Path], Path]) -> Edit:
    """Swap in a spec file the manifest still describes (same metadata, bad vector)."""

    def make(kit: Kit, tmp: Path) -> Path:
        spec = write(kit, tmp / "spec.safetensors")
        return rebuild_learnware(kit.package, tmp / "lw", kit.private, spec_file=spec)

    return make


def set_tensor(name: str, value: torch.Tensor) -> Edit:
    return with_weights(lambda t: {**t, name: value})


def renamed_layer(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("layers.0.", "layers.9."): v for k, v in tensors.items()}


def nan_spec(kit: Kit, path: Path) -> Path:
    """A spec file whose vector holds a NaN (the file format itself cannot refuse it)."""
    good = random_rkme_spec(kit.market.rkme)  # type: ignore[arg-type]
    vector = good.vector.copy()
    vector[3] = np.nan
    return write_raw_spec(path, "rkme", vector, good.metadata())


def other_schema_spec(kit: Kit, path: Path) -> Path:
    other = replace(kit.market.rkme, seed=1)  # type: ignore[type-var]
    return write_specs(path, [random_rkme_spec(other)])


def short_spec(kit: Kit, path: Path) -> Path:
    good = random_rkme_spec(kit.market.rkme)  # type: ignore[arg-type]
    return write_raw_spec(path, "rkme", good.vector[:256].copy(), {**good.metadata(), "dim": 256})


def forged_noise_spec(kit: Kit, path: Path) -> Path:
    """The ranking hijack of issue 12: honest vector, a large self-declared noise_std (its
    distance would drop by dim·noise_std² = 2,048 and rank first for every query)."""
    good = random_rkme_spec(kit.market.rkme)  # type: ignore[arg-type]
    meta = good.metadata()
    forged = {**meta, "privacy": {**meta["privacy"], "noise_std": 2.0}}
    return write_raw_spec(path, "rkme", good.vector.copy(), forged)


def few_texts_spec(kit: Kit, path: Path) -> Path:
    return write_specs(path, [random_rkme_spec(kit.market.rkme, n=5, epsilon=None)])  # type: ignore[arg-type]


def long_vector_spec(kit: Kit, path: Path) -> Path:
    good = random_rkme_spec(kit.market.rkme)  # type: ignore[arg-type]
    return write_raw_spec(path, "rkme", good.vector * 50, good.metadata())


def other_weights_base(kit: Kit) -> ModelRef:
    return ModelRef(model_id=kit.manifest.base_model.model_id, sha256="ab" * 32)


def manifest_n_999(kit: Kit, tmp: Path) -> Path:
    entry = replace(kit.manifest.specs[0], n=999)
    return with_manifest(specs=(entry,))(kit, tmp)


def base_other_weights(kit: Kit, tmp: Path) -> Path:
    return with_manifest(base_model=other_weights_base(kit))(kit, tmp)


def base_unknown(kit: Kit, tmp: Path) -> Path:
    unknown = ModelRef(model_id="qwen2.5-7b", sha256="cd" * 32)
    return with_manifest(base_model=unknown)(kit, tmp)


#: Backtracks exponentially on a long name without a match (peft re.fullmatch-es a string
#: exclude_modules over every module name: it hung the smoke run for its full timeout).
CATASTROPHIC_REGEX = "(a+)+$"

STATIC_CASES: dict[str, tuple[Edit, type[LwmError], str]] = {
    "wrong tensor shape": (
        set_tensor(f"{V_PROJ}.lora_A.weight", torch.zeros(4, 65)),
        InvalidInput,
        r"v_proj\.lora_A\.weight' has shape \[4, 65\], expected \[4, 64\]",
    ),
    "full lm_head replacement": (
        set_tensor("base_model.model.lm_head.weight", torch.zeros(2048, 64)),
        InvalidInput,
        r"'base_model\.model\.lm_head\.weight' is not a LoRA tensor",
    ),
    "module missing from the base model": (
        with_weights(renamed_layer),
        InvalidInput,
        r"targets 'model\.layers\.9\.self_attn\.(q|v)_proj', which is not an nn\.Linear",
    ),
    "r differs from the config": (
        with_config(r=8),
        InvalidInput,
        r"has shape \[4, 64\], expected \[8, 64\] = \(r, in_features\) with r=8",
    ),
    "integer adapter tensor": (
        set_tensor(f"{V_PROJ}.lora_A.weight", torch.zeros(4, 64, dtype=torch.int32)),
        InvalidInput,
        r"dtype I32",
    ),
    "lora_A without lora_B": (
        with_weights(lambda t: {k: v for k, v in t.items() if k != f"{V_PROJ}.lora_B.weight"}),
        InvalidInput,
        r"module 'model\.layers\.0\.self_attn\.v_proj' has LoRA parts \['lora_A\.weight'\]",
    ),
    "DoRA magnitude without use_dora": (
        set_tensor(f"{V_PROJ}.lora_magnitude_vector", torch.ones(32)),
        InvalidInput,
        r"needs use_dora",
    ),
    "module outside target_modules": (
        with_config(target_modules=["q_proj"]),
        InvalidInput,
        r"module 'model\.layers\.0\.self_attn\.v_proj', which is not in target_modules",
    ),
    "regex in exclude_modules (issue 12)": (
        with_config(exclude_modules=CATASTROPHIC_REGEX),
        InvalidInput,
        r"exclude_modules=.* refused; must be a list of plain module names",
    ),
    "target_modules as a string, even a plain one": (
        with_config(target_modules="v_proj"),
        InvalidInput,
        r'target_modules="v_proj" refused; must be a list of plain module names',
    ),
    "regex in a target_modules list": (
        with_config(target_modules=["q_proj", ".*v_proj"]),
        InvalidInput,
        r"target_modules=.* refused",
    ),
    "regex in layers_pattern": (
        with_config(layers_pattern=CATASTROPHIC_REGEX, layers_to_transform=[0]),
        InvalidInput,
        r"layers_pattern=.* refused; must be a plain name",
    ),
    "regex as an alpha_pattern key": (
        with_config(alpha_pattern={CATASTROPHIC_REGEX: 8}),
        InvalidInput,
        r"alpha_pattern=.* refused; must be an object of plain module names",
    ),
    "not a LoRA config": (with_config(peft_type="IA3"), InvalidInput, r'peft_type="IA3" refused'),
    "auto_mapping names code": (
        with_config(auto_mapping={"base_model_class": "Evil", "parent_library": "evil.mod"}),
        InvalidInput,
        r"auto_mapping=.* refused \(names classes to import\)",
    ),
    "modules_to_save ships full weights": (
        with_config(modules_to_save=["lm_head"]),
        InvalidInput,
        r"modules_to_save=.* refused",
    ),
    "unknown option switched on": (
        with_config(future_option=True),
        InvalidInput,
        r"future_option=true: unknown LoRA option refused",
    ),
    "rank missing from the config": (with_config(r=DELETE), InvalidInput, r"'r' is missing"),
    "NaN in the spec": (with_raw_spec(nan_spec), SpecError, r"spec\.safetensors: .*finite"),
    "spec of another schema": (
        with_spec_file(other_schema_spec),
        SchemaMismatch,
        r"spec was made under schema rkme-\w+, the market uses rkme-\w+",
    ),
    "spec dim mismatch": (
        with_spec_file(short_spec),
        SpecError,
        r"spec has 256 entries, schema rkme-\w+ expects 512",
    ),
    "spec claims a large noise_std": (
        with_raw_spec(forged_noise_spec),
        SpecError,
        r"spec\.safetensors: noise_std=2 disagrees with the accountant's 0\.005\d* for epsilon=4",
    ),
    "spec of too few texts": (
        with_spec_file(few_texts_spec),
        SpecError,
        r"spec\.safetensors: the spec summarises 5 texts; this market needs at least 10",
    ),
    "spec vector norm impossible for its noise": (
        with_raw_spec(long_vector_spec),
        SpecError,
        r"spec\.safetensors: rkme vector norm \S+ is impossible for its claimed noise std 0\.005",
    ),
    "manifest disagrees with the spec file": (
        manifest_n_999,
        SpecError,
        r"manifest spec 'rkme' says n=999 but spec\.safetensors holds n=\d+",
    ),
    "base model with other weights": (
        base_other_weights,
        SchemaMismatch,
        r"names weights sha256 abababab.*adapter made for other weights",
    ),
    "base model not accepted": (
        base_unknown,
        SchemaMismatch,
        r"base model 'qwen2\.5-7b' is not accepted by this market",
    ),
}


@pytest.mark.parametrize("case", list(STATIC_CASES), ids=list(STATIC_CASES))
def test_bad_but_signed_package_is_rejected_with_a_reason(
    kit: Kit, tmp_path: Path, case: str
) -> None:
    make, error, pattern = STATIC_CASES[case]
    package = make(kit, tmp_path)

    judgment = kit.checker(run_smoke=False).check(package, kit.public)

    assert_rejected(judgment, error, pattern)
    assert judgment.manifest is not None  # it verified: the server may show what was refused
    with pytest.raises(error):
        check_static(package, kit.market, kit.bases, PackageLimits(), kit.public)


# ---------------------------------------------------------------- integrity


@pytest.mark.parametrize(
    ("name", "index"),
    [(ADAPTER_WEIGHTS, -1), (SPEC, -1), (ADAPTER_CONFIG, 5), (MANIFEST, 40), (SIGNATURE, 0)],
)
def test_one_flipped_byte_is_rejected(kit: Kit, tmp_path: Path, name: str, index: int) -> None:
    package = copy_package(kit, tmp_path)
    flip_byte(package / name, index)

    judgment = kit.checker().check(package, kit.public)

    assert_rejected(judgment, IntegrityError, re.escape(name) if name != SIGNATURE else "signature")
    assert judgment.manifest is None and judgment.smoke is None


def test_pickle_bearing_package_is_rejected(kit: Kit, tmp_path: Path) -> None:
    package = copy_package(kit, tmp_path)
    torch.save({"lora": torch.zeros(1)}, package / "adapter_model.bin")

    judgment = kit.checker().check(package, kit.public)

    assert_rejected(judgment, IntegrityError, r"'adapter_model\.bin': pickle-like file refused")


def test_adapter_over_the_size_limit_is_rejected(kit: Kit) -> None:
    checker = Checker(kit.market, kit.bases, kit.home, PackageLimits(max_adapter_bytes=1024))

    judgment = checker.check(kit.package, kit.public)

    assert_rejected(judgment, ResourceExhausted, r"adapter_model\.safetensors: \d+ bytes, over")


def test_package_signed_by_another_key_is_rejected(kit: Kit) -> None:
    _, stranger = signing.generate_keypair()

    judgment = kit.checker().check(kit.package, stranger)

    assert_rejected(judgment, IntegrityError, r"signature: does not verify")


# ---------------------------------------------------------------- smoke run


def test_adapter_with_nan_weights_fails_the_smoke_run(kit: Kit, tmp_path: Path) -> None:
    nan_b = torch.full((32, 4), float("nan"))
    package = set_tensor(f"{V_PROJ}.lora_B.weight", nan_b)(kit, tmp_path)

    judgment = kit.checker(smoke_timeout_s=120).check(package, kit.public)

    assert_rejected(judgment, InvalidInput, r"^smoke run: logits are not finite")
    assert judgment.smoke is not None and not judgment.smoke.timed_out
    assert judgment.manifest is not None and judgment.specs


def test_tensors_peft_would_ignore_fail_the_smoke_run(kit: Kit, tmp_path: Path) -> None:
    """``layers_to_transform`` is only checked by loading: peft must load every tensor.

    Here layer 0 alone leaves out the 12 tensors of layers 1 to 3 (A and B of q and v)."""
    package = with_config(layers_to_transform=[0])(kit, tmp_path)

    judgment = kit.checker(smoke_timeout_s=120).check(package, kit.public)

    assert_rejected(judgment, InvalidInput, r"^smoke run: peft ignored 12 adapter tensor\(s\)")


def test_smoke_run_that_times_out_is_rejected(kit: Kit) -> None:
    checker = kit.checker(smoke_timeout_s=0.5)

    start = time.monotonic()
    judgment = checker.check(kit.package, kit.public)

    assert_rejected(judgment, ResourceExhausted, r"^smoke run: timed out after 0\.5 s")
    assert judgment.smoke is not None and judgment.smoke.timed_out
    assert time.monotonic() - start < 5.0  # killed, not waited for


def test_a_catastrophic_regex_is_refused_fast_without_a_smoke_run(kit: Kit, tmp_path: Path) -> None:
    package = with_config(exclude_modules=CATASTROPHIC_REGEX)(kit, tmp_path)

    start = time.monotonic()
    judgment = kit.checker(smoke_timeout_s=120).check(package, kit.public)

    assert_rejected(judgment, InvalidInput, r"exclude_modules=\"\(a\+\)\+\$\" refused")
    assert judgment.smoke is None and time.monotonic() - start < 5.0


def test_a_memory_limit_too_small_for_the_run_fails_it_with_a_clear_reason(kit: Kit) -> None:
    checker = kit.checker(smoke_timeout_s=120, smoke_limits=SmokeLimits(memory_bytes=256 * MIB))

    with pytest.raises(ModelUnavailable) as raised:
        checker.check(kit.package, kit.public)

    assert "out of memory under the smoke run's limit of 256 MiB" in str(raised.value)


def test_the_smoke_run_dies_with_its_parent(kit: Kit, tmp_path: Path) -> None:
    """The child confines itself (rlimits) and asks the kernel to kill it with its parent;
    stopped (as a hung run would be) and orphaned by a SIGKILL, it is gone within seconds."""
    base = kit.bases[kit.manifest.base_model.model_id]
    limits = SmokeLimits(memory_bytes=3000 * MIB, cpu_s=77)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *smoke_command(kit.package, base, kit.home, 4, limits, 0)],
        cwd=Path(__file__).resolve().parent.parent,  # where ``-m server.smoke`` is found
    )
    child = None
    try:
        child = wait_for(lambda: _confined_child(parent.pid), timeout_s=60)
        assert child is not None, "no smoke child under its limits appeared within 60 s"
        os.kill(child, signal.SIGSTOP)  # a hung run: it will not finish by itself
        parent.kill()
        parent.wait(10)

        assert wait_for(lambda: not is_alive(child), timeout_s=5), "the child outlived its parent"
    finally:
        parent.kill()
        for pid in [child] if child else child_pids(parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


#: A parent that starts the smoke command given as argv (its own pid put in) and waits.
PARENT = """
import os, subprocess, sys
command = sys.argv[1:]
command[command.index("--parent-pid") + 1] = str(os.getpid())
subprocess.Popen(command, start_new_session=True).wait()
"""


def _confined_child(pid: int) -> int | None:
    """The child of ``pid`` once it has confined itself."""
    return next((child for child in child_pids(pid) if is_confined(child)), None)


def test_base_model_the_market_cannot_load_is_an_internal_error(kit: Kit, tmp_path: Path) -> None:
    base = replace(kit.bases[kit.manifest.base_model.model_id], name=str(tmp_path / "gone"))

    with pytest.raises(ModelUnavailable, match="smoke run could not start: base model"):
        run_smoke(kit.package, base, kit.home, timeout_s=120)

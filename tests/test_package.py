"""The learnware package: manifest, build/verify, and the deterministic, safe tar."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shared import signing
from shared.errors import AlreadyExists, IntegrityError, InvalidInput, ResourceExhausted
from shared.learnware import (
    PACKAGE_FILES,
    Contributor,
    DpLedger,
    DpPart,
    DpTotal,
    Manifest,
    PackageLimits,
    SpecEntry,
    build_package,
    pack_tar,
    read_safetensors_header,
    signing_payload,
    unpack_tar,
    verify_package,
    write_tar,
)
from shared.models import ModelRef

LORA_A = "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"
LORA_B = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"


# ---------------------------------------------------------------- fixtures


def make_manifest(kid: str, **changes: object) -> Manifest:
    manifest = Manifest(
        name="icd-circulatory",
        domain="medicine",
        task="text-generation",
        description="LoRA for ICD-10 circulatory chapter.\nTiny test adapter.",
        license="Apache-2.0",
        base_model=ModelRef(model_id="tiny", sha256="ab" * 32),
        specs=(
            SpecEntry(
                kind="rkme",
                schema_id="rkme-v1-d512",
                dim=8,
                epsilon=4,
                delta=1e-5,
                n=300,
                extra={"sigma": 1.16, "gamma": 0.5},
            ),
        ),
        dp=DpLedger(
            parts=(
                DpPart("spec:rkme", 4.0, 1e-5, "gaussian", {"sigma": 1.16}),
                DpPart("adapter", None, 0.0, "none"),
            ),
            total=DpTotal(epsilon=None, delta=0.0, accountant="rdp"),
        ),
        contributor=Contributor(key_id=kid, name="st-mary"),
        created_at="2026-11-27T09:46:00+00:00",
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


@pytest.fixture
def keys() -> tuple[signing.Ed25519PrivateKey, signing.Ed25519PublicKey]:
    return signing.generate_keypair()


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A real peft-shaped adapter folder (plus peft's README) and a spec file."""
    adapter = tmp_path / "inputs" / "adapter"
    adapter.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    save_file(
        {LORA_A: torch.randn(4, 16, generator=generator), LORA_B: torch.zeros(16, 4)},
        str(adapter / "adapter_model.safetensors"),
    )
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["v_proj"],
        "base_model_name_or_path": "tiny",
        "task_type": "CAUSAL_LM",
    }
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "README.md").write_text("peft writes this; it must not be packaged")
    spec = tmp_path / "inputs" / "spec.safetensors"
    save_file({"rkme": torch.linspace(-1, 1, 8)}, str(spec))
    return adapter, spec


@pytest.fixture
def package(tmp_path: Path, inputs, keys) -> Path:
    adapter, spec = inputs
    private, public = keys
    return build_package(
        tmp_path / "out" / "lw", adapter, spec, make_manifest(signing.key_id(public)), private
    ).folder


def flip_byte(path: Path, index: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- manifest


def test_manifest_json_is_canonical_and_round_trips() -> None:
    manifest = make_manifest("0123456789abcdef", description="Données de cardiologie")

    data = manifest.to_json()

    assert "Données".encode() in data  # UTF-8, not \u escapes
    resorted = json.dumps(
        json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert resorted.encode() == data
    assert Manifest.from_json(data) == manifest
    assert manifest.spec("rkme").epsilon == 4.0  # int normalised to float


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "unknown keys \\['extra'\\]"),
        (lambda d: d.pop("license"), "lacks keys \\['license'\\]"),
        (lambda d: d["specs"][0].update(epsilon="4"), "epsilon must be a number"),
        (lambda d: d["specs"][0].update(surprise=True), "specs\\[0\\] has unknown keys"),
        (lambda d: d.update(format_version=2), "format_version 2"),
        (lambda d: d.update(format_version=1.0), "format_version 1.0"),
        (lambda d: d.update(specs={}), "must be a JSON array"),
        (lambda d: d["files"].update(x={"sha256": "0" * 64, "size": 1}), "'x' is not a payload"),
    ],
)
def test_manifest_from_json_is_strict(mutate, message: str) -> None:
    raw = json.loads(make_manifest("0123456789abcdef").to_json())
    mutate(raw)

    with pytest.raises(InvalidInput, match=message):
        Manifest.from_json(json.dumps(raw))


def test_manifest_from_json_rejects_duplicate_keys_and_nan() -> None:
    text = make_manifest("0123456789abcdef").to_json().decode()

    with pytest.raises(InvalidInput, match="duplicate JSON key 'name'"):
        Manifest.from_json('{"name":"a",' + text[1:])
    with pytest.raises(InvalidInput, match="NaN"):
        Manifest.from_json(text.replace('"epsilon":4.0', '"epsilon":NaN', 1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Bad Name!"}, "'Bad Name!'"),
        ({"license": "not a license"}, "SPDX"),
        ({"created_at": "2026-11-27T09:46:00"}, "UTC offset"),
        ({"base_model": "tiny"}, "base_model must be a ModelRef"),
        ({"specs": ()}, "at least one"),
        ({"description": " padded"}, "leading or trailing"),
    ],
)
def test_manifest_validates_fields_quoting_the_value(changes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make_manifest("0123456789abcdef", **changes)


def test_dp_report_must_cover_and_agree_with_the_specs() -> None:
    kid = "0123456789abcdef"
    only_adapter = DpLedger((DpPart("adapter", None, 0.0, "none"),), DpTotal(None, 0.0, "rdp"))
    disagree = DpLedger(
        (DpPart("spec:rkme", 8.0, 1e-5, "gaussian"), DpPart("adapter", None, 0.0, "none")),
        DpTotal(None, 0.0, "rdp"),
    )

    with pytest.raises(InvalidInput, match="must cover exactly"):
        make_manifest(kid, dp=only_adapter)
    with pytest.raises(InvalidInput, match="dp part 'spec:rkme' says"):
        make_manifest(kid, dp=disagree)
    with pytest.raises(InvalidInput, match="total must then be null"):
        DpLedger((DpPart("adapter", None, 0.0, "none"),), DpTotal(4.0, 1e-5, "rdp"))
    with pytest.raises(InvalidInput, match="delta must be 0"):
        DpPart("adapter", None, 1e-5, "none")
    with pytest.raises(InvalidInput, match="epsilon must be finite and > 0"):
        DpPart("adapter", -1.0, 1e-5, "dp-sgd")


def test_signing_payload_layout() -> None:
    files = {
        name: {"sha256": f"{i}" * 64, "size": i}
        for i, name in enumerate(
            sorted({"adapter_model.safetensors", "adapter_config.json", "spec.safetensors"})
        )
    }
    raw = json.loads(make_manifest("0123456789abcdef").to_json())
    raw["files"] = files
    manifest = Manifest.from_dict(raw)

    payload = signing_payload(manifest)

    body = manifest.to_json()
    head = (
        b"lwm-learnware-v1\nformat:1\n"
        b"file:adapter_config.json:" + b"0" * 64 + b"\n"
        b"file:adapter_model.safetensors:" + b"1" * 64 + b"\n"
        b"file:spec.safetensors:" + b"2" * 64 + b"\n"
        b"manifest:" + str(len(body)).encode() + b"\n"
    )
    assert payload == head + body
    with pytest.raises(InvalidInput, match="cannot sign"):
        signing_payload(make_manifest("0123456789abcdef"))


# ---------------------------------------------------------------- build and verify


def test_build_then_verify(package: Path, keys) -> None:
    _, public = keys

    verified = verify_package(package, public)

    assert sorted(p.name for p in package.iterdir()) == sorted(PACKAGE_FILES)
    assert verified.signature_verified and verified.signer_key_id == signing.key_id(public)
    assert set(verified.manifest.files) == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "spec.safetensors",
    }
    assert len((package / "signature").read_bytes()) == 64
    assert os.listdir(package.parent) == ["lw"]  # no temporary folder left
    assert read_safetensors_header(package / "spec.safetensors")["rkme"].shape == (8,)
    assert set(read_safetensors_header(package / "adapter_model.safetensors")) == {LORA_A, LORA_B}


def test_verify_without_a_key_checks_hashes_only(package: Path) -> None:
    verified = verify_package(package, None)

    assert not verified.signature_verified


@pytest.mark.parametrize(
    "name", ["adapter_model.safetensors", "spec.safetensors", "adapter_config.json"]
)
def test_flipped_payload_byte_names_the_file(package: Path, keys, name: str) -> None:
    flip_byte(package / name, -2)

    with pytest.raises(IntegrityError, match=name.replace(".", r"\.")):
        verify_package(package, keys[1])


@pytest.mark.parametrize("old_new", [(b"Tiny test", b"Tiny tesT"), (b'{"base', b'["base')])
def test_tampered_manifest_is_refused_naming_it(package: Path, keys, old_new) -> None:
    path = package / "manifest.json"
    path.write_bytes(path.read_bytes().replace(*old_new))

    with pytest.raises(IntegrityError, match=r"manifest\.json"):
        verify_package(package, keys[1])


def test_non_canonical_manifest_is_refused(package: Path, keys) -> None:
    path = package / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_bytes()), indent=2))

    with pytest.raises(IntegrityError, match="canonical"):
        verify_package(package, keys[1])


def test_wrong_key_or_flipped_signature_is_refused(package: Path, keys) -> None:
    _, stranger = signing.generate_keypair()

    with pytest.raises(IntegrityError, match="^signature: does not verify"):
        verify_package(package, stranger)
    flip_byte(package / "signature", 0)
    with pytest.raises(IntegrityError, match="^signature"):
        verify_package(package, keys[1])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("notes.txt", "unexpected file"),
        ("adapter_model.bin", "pickle"),
        ("optimizer.pt", "pickle"),
        ("data.pkl", "pickle"),
    ],
)
def test_extra_or_pickle_files_are_refused(package: Path, keys, name: str, message: str) -> None:
    (package / name).write_bytes(b"\x80\x04K\x01.")

    with pytest.raises(IntegrityError, match=message):
        verify_package(package, keys[1])


def test_links_folders_executables_and_missing_files_are_refused(package: Path, keys) -> None:
    spec = package / "spec.safetensors"
    spec.chmod(0o755)
    with pytest.raises(IntegrityError, match="executable"):
        verify_package(package, keys[1])
    spec.chmod(0o644)

    real = package.parent / "real-spec"
    spec.rename(real)
    spec.symlink_to(real)
    with pytest.raises(IntegrityError, match="not a regular file"):
        verify_package(package, keys[1])

    spec.unlink()
    with pytest.raises(IntegrityError, match=r"spec\.safetensors: missing"):
        verify_package(package, keys[1])


def test_build_refuses_existing_out_dir_wrong_key_and_leaves_nothing(
    tmp_path: Path, inputs, keys
) -> None:
    adapter, spec = inputs
    private, public = keys
    out = tmp_path / "out"
    (out / "taken").mkdir(parents=True)
    manifest = make_manifest(signing.key_id(public))

    with pytest.raises(AlreadyExists):
        build_package(out / "taken", adapter, spec, manifest, private)
    with pytest.raises(InvalidInput, match="signing key"):
        build_package(out / "lw", adapter, spec, make_manifest("0123456789abcdef"), private)
    with pytest.raises(IntegrityError, match="not safetensors"):
        build_package(out / "lw", adapter, adapter / "adapter_config.json", manifest, private)
    with pytest.raises(ResourceExhausted):
        build_package(
            out / "lw", adapter, spec, manifest, private, limits=PackageLimits(max_spec_bytes=16)
        )

    assert os.listdir(out) == ["taken"]


def test_build_accepts_explicit_files_and_refuses_pickle_adapters(
    tmp_path: Path, inputs, keys
) -> None:
    adapter, spec = inputs
    private, public = keys
    manifest = make_manifest(signing.key_id(public))
    pair = (adapter / "adapter_model.safetensors", adapter / "adapter_config.json")

    built = build_package(tmp_path / "a", pair, spec, manifest, private)

    assert verify_package(built.folder, public).manifest == built.manifest
    assert built.manifest.name == "icd-circulatory"
    with tempfile.TemporaryFile() as tar:  # the digest is the canonical tar's, as submitted
        assert built.digest == write_tar(built.folder, tar).sha256
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04.")
    (pickled / "adapter_config.json").write_text("{}")
    with pytest.raises(InvalidInput, match="pickle"):
        build_package(tmp_path / "b", pickled, spec, manifest, private)


# ---------------------------------------------------------------- tar


def test_tar_is_deterministic_and_round_trips_byte_identical(
    package: Path, keys, tmp_path: Path
) -> None:
    first = pack_tar(package)
    for path in package.iterdir():
        os.utime(path, (1e9, 1e9))
        path.chmod(0o600)

    second = pack_tar(package)
    unpacked = unpack_tar(second, tmp_path / "unpacked")

    assert first == second
    assert pack_tar(unpacked) == first
    for name in PACKAGE_FILES:
        assert (unpacked / name).read_bytes() == (package / name).read_bytes()
    assert verify_package(unpacked, keys[1]).signature_verified
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(PACKAGE_FILES)
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}


def test_unpack_from_a_file_path(package: Path, tmp_path: Path) -> None:
    tar_path = tmp_path / "lw.tar"
    tar_path.write_bytes(pack_tar(package))

    unpacked = unpack_tar(tar_path, tmp_path / "from-file")

    assert sorted(p.name for p in unpacked.iterdir()) == sorted(PACKAGE_FILES)
    with pytest.raises(AlreadyExists):
        unpack_tar(tar_path, unpacked)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, data: bytes = b"x", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _huge_header(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 10 * 1024**3  # claims 10 GiB; the data is not there
    return info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024


MALICIOUS = {  # case: (tar bytes, what the refusal says)
    "symlink": (_tar([_link("spec.safetensors", "/etc/passwd", tarfile.SYMTYPE)]), "link"),
    "hardlink": (_tar([_link("spec.safetensors", "../../x", tarfile.LNKTYPE)]), "link"),
    "dotdot": (_tar([_member("../x")]), "paths are refused"),
    "absolute": (_tar([_member("/tmp/lwm-evil-x")]), "paths are refused"),
    "nested": (_tar([_member("sub/spec.safetensors")]), "paths are refused"),
    "fifo": (_tar([_member("spec.safetensors", b"", type=tarfile.FIFOTYPE)]), "non-regular"),
    "executable": (_tar([_member("spec.safetensors", mode=0o755)]), "executable"),
    "pickle": (_tar([_member("adapter_model.bin")]), "pickle-like"),
    "unexpected": (_tar([_member("README.md")]), "unexpected file"),
    "duplicate": (_tar([_member("signature"), _member("signature")]), "twice"),
    "missing": (_tar([_member("signature")]), "missing"),
    "huge": (_huge_header("adapter_model.safetensors"), "over the .*-byte limit"),
    "not-a-tar": (b"PK\x03\x04 definitely a zip" * 40, "not a valid uncompressed"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tars_are_refused_and_write_nothing(tmp_path: Path, case: str) -> None:
    dest = tmp_path / "a" / "b" / "dest"

    data, message = MALICIOUS[case]

    with pytest.raises((IntegrityError, ResourceExhausted), match=message):
        unpack_tar(data, dest)

    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()]
    assert leftovers == []
    assert not dest.exists()
    assert not Path("/tmp/lwm-evil-x").exists()


def test_gzipped_tar_is_refused(package: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(package.iterdir()):
            tar.add(path, arcname=path.name)

    with pytest.raises(IntegrityError, match="uncompressed"):
        unpack_tar(buffer.getvalue(), tmp_path / "dest")


def test_member_over_its_limit_is_refused(package: Path, tmp_path: Path) -> None:
    data = pack_tar(package)

    with pytest.raises(ResourceExhausted, match=r"spec\.safetensors"):
        unpack_tar(data, tmp_path / "dest", limits=PackageLimits(max_spec_bytes=10))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "out"]


# ---------------------------------------------------------------- peft compatibility


def test_package_folder_loads_with_plain_peft(tmp_path: Path, inputs, keys) -> None:
    """DESIGN §5: a verified learnware folder is what PeftModel.from_pretrained expects."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    _, spec = inputs
    private, public = keys
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    trained = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["v_proj"]))
    with torch.no_grad():
        trained.base_model.model.model.layers[0].self_attn.v_proj.lora_B["default"].weight.fill_(
            0.5
        )
    trained.save_pretrained(tmp_path / "peft-out")
    package = build_package(
        tmp_path / "lw", tmp_path / "peft-out", spec, make_manifest(signing.key_id(public)), private
    ).folder
    verify_package(package, public)

    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(LlamaForCausalLM(config), str(package))

    weight = loaded.base_model.model.model.layers[0].self_attn.v_proj.lora_B["default"].weight
    assert torch.all(weight == 0.5)


# ---------------------------------------------------------------- adapter policy (issue 12)


def test_the_adapter_config_our_fine_tuning_writes_passes_the_policy(lwm_home, tmp_path) -> None:
    """The policy refuses module names that are regular expressions; the project's own
    fine-tuning (``client.finetune.lora_model``, saved by peft) must still pass it."""
    from client.finetune import FinetuneConfig, lora_model
    from shared.learnware.adapter_policy import check_config
    from shared.models import load_causal_lm

    model = lora_model(load_causal_lm("tiny", lwm_home), FinetuneConfig())
    model.save_pretrained(str(tmp_path), safe_serialization=True)

    settings = check_config(tmp_path / "adapter_config.json")

    assert settings.targets is not None and sorted(settings.targets) == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "changes",
    [
        {"exclude_modules": "(a+)+$"},
        {"target_modules": "v_proj"},
        {"target_modules": ["v_proj|q_proj"]},
        {"layers_pattern": "(layers)+", "layers_to_transform": [0]},
        {"alpha_pattern": {"(a+)+$": 16}},
    ],
)
def test_module_names_that_are_regular_expressions_are_refused(tmp_path, changes) -> None:
    """peft reads a string ``target_modules``/``exclude_modules`` as a regex over every
    module name (one hung the market's smoke run for 120 s); the client applies the same
    policy to every learnware it loads."""
    from shared.learnware.adapter_policy import check_config

    config = {"peft_type": "LORA", "r": 4, "target_modules": ["v_proj"], **changes}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))

    with pytest.raises(InvalidInput, match=r"refused; must be (a list of plain|a plain|an object)"):
        check_config(tmp_path / "adapter_config.json")

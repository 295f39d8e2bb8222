"""Offline models: the tiny Llama, local folders, SmolLM2 conversion, the sentence encoder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data import load_domain
from shared.errors import DataError, ModelUnavailable
from shared.files import building
from shared.home import Home
from shared.models import (
    ModelRef,
    list_models,
    load_causal_lm,
    load_encoder,
    model_ref,
    weights_sha256,
)
from shared.models.refs import SIDECAR

TEXTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "The patient presented with acute myocardial infarction of the anterior wall.",
    "Héllo wörld: naïve café, 東京, emoji 😀, tabs\tand\nnewlines.",
]


def _one_line_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# --- tiny -------------------------------------------------------------------------------------


def test_tiny_builds_and_loads(lwm_home: Home) -> None:
    loaded = load_causal_lm("tiny", lwm_home)

    assert loaded.name == "tiny"
    assert loaded.ref.model_id == "tiny-llama-v1"
    assert len(loaded.ref.sha256) == 64
    assert loaded.path == lwm_home.root / "models" / "tiny-v1"
    assert (loaded.path / "model.safetensors").is_file()
    assert json.loads((loaded.path / SIDECAR).read_text())["sha256"] == loaded.ref.sha256
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token == "<pad>"
    assert loaded.tokenizer.padding_side == "right"
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size == 2048
    assert not any(p.name.startswith(".") for p in loaded.path.parent.iterdir())


def test_tiny_is_identical_across_builds(lwm_home: Home, tmp_path: Path) -> None:
    other = Home(tmp_path / "second-home")

    first = load_causal_lm("tiny", lwm_home)
    second = load_causal_lm("tiny", other)

    assert first.path != second.path
    assert first.ref == second.ref
    assert weights_sha256(second.model) == first.ref.sha256
    tokenizer_bytes = [(p / "tokenizer.json").read_bytes() for p in (first.path, second.path)]
    assert tokenizer_bytes[0] == tokenizer_bytes[1]


def test_tiny_forward_pass_on_real_text(lwm_home: Home) -> None:
    loaded = load_causal_lm("tiny", lwm_home)
    texts = load_domain("software")[:8]

    batch = loaded.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**batch).logits

    assert logits.shape == (*batch["input_ids"].shape, 2048)
    assert torch.isfinite(logits).all()
    assert (batch["attention_mask"][:, 0] == 1).all()  # right padding


def test_tiny_tokenizer_round_trips_text(lwm_home: Home) -> None:
    tokenizer = load_causal_lm("tiny", lwm_home).tokenizer

    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_weights_hash_tracks_the_weights(lwm_home: Home) -> None:
    loaded = load_causal_lm("tiny", lwm_home)

    with torch.no_grad():
        loaded.model.model.norm.weight[0] += 1.0

    assert weights_sha256(loaded.model) != loaded.ref.sha256


def test_model_ref_reads_the_sidecar(lwm_home: Home) -> None:
    loaded = load_causal_lm("tiny", lwm_home)

    assert model_ref("tiny", lwm_home) == loaded.ref


# --- names and folders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-17", "unknown model 'gpt-17'"),
        ("./no/such/folder", "no model folder"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "load offline"),
    ],
)
def test_unavailable_models_say_why_in_one_line(lwm_home: Home, name: str, expected: str) -> None:
    with pytest.raises(ModelUnavailable) as excinfo:
        load_causal_lm(name, lwm_home)

    message = _one_line_error(excinfo)
    assert expected in message
    assert "tiny" in message


def test_folder_without_config_is_not_a_model(lwm_home: Home, tmp_path: Path) -> None:
    (tmp_path / "weights.txt").write_text("not a model")

    with pytest.raises(ModelUnavailable) as excinfo:
        model_ref(str(tmp_path), lwm_home)

    assert "no config.json" in _one_line_error(excinfo)


def test_broken_model_folder_is_unavailable(lwm_home: Home, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    with pytest.raises(ModelUnavailable) as excinfo:
        load_causal_lm(str(tmp_path), lwm_home)

    assert f"cannot load a causal LM from {tmp_path}" in _one_line_error(excinfo)


def test_local_folder_loads_by_path(lwm_home: Home, tmp_path: Path) -> None:
    tiny = load_causal_lm("tiny", lwm_home)
    copy = tmp_path / "my-model"
    shutil.copytree(tiny.path, copy)

    loaded = load_causal_lm(str(copy), lwm_home)

    assert loaded.path == copy.resolve()
    assert loaded.name == str(copy.resolve())
    assert loaded.ref == ModelRef(model_id="tiny-llama-v1", sha256=tiny.ref.sha256)
    assert model_ref(str(copy), lwm_home) == loaded.ref
    assert list((lwm_home.root / "cache" / "model-refs").glob("*.json"))


def test_saved_folder_without_sidecar_gets_a_local_id(lwm_home: Home, tmp_path: Path) -> None:
    tiny = load_causal_lm("tiny", lwm_home)
    folder = tmp_path / "plain"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)

    ref = model_ref(str(folder), lwm_home)

    assert ref.model_id == "local/plain"
    assert ref.sha256 == tiny.ref.sha256


def test_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "models" / "half"

    with pytest.raises(KeyboardInterrupt), building(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    assert not final.exists()
    assert list((tmp_path / "models").iterdir()) == []


def test_list_models_reports_tiny_and_creates_nothing(lwm_home: Home, tmp_path: Path) -> None:
    load_causal_lm("tiny", lwm_home)
    empty = Home(tmp_path / "never-made")

    infos = {info.name: info for info in list_models(lwm_home)}
    fresh = {info.name: info for info in list_models(empty)}

    assert set(infos) == {"tiny", "smollm2-135m", "all-minilm-l6-v2"}
    assert infos["tiny"].available and infos["tiny"].cached
    assert infos["tiny"].sha256 == model_ref("tiny", lwm_home).sha256
    assert not fresh["tiny"].cached and fresh["tiny"].path is None
    assert all(info.how_to_get for info in infos.values())
    assert not empty.root.exists()


def test_importing_is_instant_and_writes_nothing(tmp_path: Path) -> None:
    code = (
        "import sys, shared.models, shared.data; "
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'numpy'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        env={"LWM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "home").exists()


# --- sentence encoder -------------------------------------------------------------------------


def test_encoder_embeds_and_ranks_similar_texts(lwm_home: Home) -> None:
    encoder = load_encoder(lwm_home)
    texts = [
        "The heart pumps blood through the arteries.",
        "Cardiac muscle moves blood around the body.",
        "Shares fell sharply on the stock market today.",
    ]

    vectors = encoder.encode(texts)

    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_encoder_ref_and_disk_cache(lwm_home: Home) -> None:
    encoder = load_encoder(lwm_home)
    texts = load_domain("quotes")[:20]

    first = encoder.encode_cached(texts)
    again = load_encoder(lwm_home).encode_cached(texts)

    assert encoder.ref.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert load_encoder(lwm_home).ref == encoder.ref
    assert json.loads((lwm_home.root / "cache" / "encoder.json").read_text())["sha256"] == (
        encoder.ref.sha256
    )
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, encoder.encode(texts), atol=1e-5)
    assert len(list((lwm_home.root / "cache" / "embeddings").glob("*.npy"))) >= 1


@pytest.mark.parametrize("texts", [[], "one string"])
def test_encoder_rejects_bad_input(lwm_home: Home, texts: list[str] | str) -> None:
    with pytest.raises(DataError):
        load_encoder(lwm_home).encode(texts)


# --- SmolLM2 ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_and_reloads(lwm_home: Home) -> None:
    converted = load_causal_lm("smollm2-135m", lwm_home)
    reloaded = load_causal_lm("smollm2-135m", lwm_home)
    batch = reloaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reloaded.model(**batch).logits

    assert converted.ref == reloaded.ref == model_ref("smollm2-135m", lwm_home)
    assert converted.ref.model_id == "smollm2-135m-instruct-q4_1"  # what it is, not the Hub id
    source = json.loads((reloaded.path / SIDECAR).read_text())["source"]
    assert source["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(source["gguf_sha256"]) == 64
    assert "dequantised to fp32" in source["conversion"]
    assert load_causal_lm("smollm2-135m-instruct-q4_1", lwm_home).ref == converted.ref
    assert weights_sha256(reloaded.model) == converted.ref.sha256
    assert "quantization_config" not in json.loads((reloaded.path / "config.json").read_text())
    assert reloaded.tokenizer.pad_token is not None
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()

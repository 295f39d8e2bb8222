"""Honest base-model identity (issue 15 item 3): ids say what the weights are, a fetched
learnware names a base model ``lwm`` resolves, and plain peft loads it with the same logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from builders import train_lora_adapter
from market_fixtures import market_server

from client.contribute import ContributeConfig, contribute, package_adapter
from client.finetune import FinetuneConfig
from client.market import Connection
from client.publish import LearnwareCard
from client.run import load_learnware
from client.user import check_folder
from server.records import Role
from shared import signing
from shared.home import Home
from shared.models import load_causal_lm, model_ref, smollm2, tiny
from shared.models.refs import SIDECAR

TEXTS = [
    f"Return the {word} of the list, sorted in ascending order, as a new list number {i}."
    for i, word in enumerate(["sum", "mean", "head", "tail", "length", "copy"] * 16)
]  # 96: enough for an RKME spec's DP count at epsilon 4


def lwm(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LWM_HOME": str(home.root), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", *args], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_builtin_ids_name_what_the_weights_are_and_resolve_like_names(lwm_home: Home) -> None:
    loaded = load_causal_lm(tiny.MODEL_ID, lwm_home)  # the id a manifest names loads too
    sidecar = json.loads((loaded.path / SIDECAR).read_text())

    assert smollm2.MODEL_ID == "smollm2-135m-instruct-q4_1"  # not the Hub's checkpoint id
    assert loaded.name == "tiny" and model_ref(tiny.MODEL_ID, lwm_home) == loaded.ref
    assert sidecar["model_id"] == tiny.MODEL_ID and sidecar["sha256"] == loaded.ref.sha256
    assert "standard library" in sidecar["source"]["tokenizer"]


def test_models_list_paths_shows_each_base_models_folder_id_and_sha(lwm_home: Home) -> None:
    ref = model_ref("tiny", lwm_home)

    lines = lwm(lwm_home, "models", "list", "--paths").stdout.splitlines()

    rows = {line.split("\t")[0]: line.split("\t") for line in lines}
    folder = str(lwm_home.root / "models" / "tiny-v1")
    assert rows["tiny"] == ["tiny", tiny.MODEL_ID, ref.sha256, folder]
    assert rows[smollm2.NAME][1] == smollm2.MODEL_ID


def test_a_fetched_learnware_loads_in_plain_peft_with_lwms_logits(lwm_home: Home, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    with market_server(tmp_path, lwm_home, run_smoke=False) as market:
        market.new_key("alice", Role.CONTRIBUTOR)
        market.new_key("uma", Role.USER)
        card = LearnwareCard("plain-peft", "python", "text-generation", "", "MIT")
        config = ContributeConfig(card, finetune=FinetuneConfig(steps=4, batch_size=4))
        alice = Connection(market.address, market.keys_dir / "alice.key", market.layout.ca_cert)
        verdict = contribute(TEXTS, config, alice, home=lwm_home, noise_seed=0)
        uma = ["--key", str(market.keys_dir / "uma.key"), "--ca", str(market.layout.ca_cert)]
        lw, peft_dir = tmp_path / "lw", tmp_path / "peft"
        lwm(lwm_home, "fetch", verdict.learnware_id, "--out", str(lw), "--peft-dir",
            str(peft_dir), "--server", market.address, *uma)  # fmt: skip

    signed = json.loads((lw / "adapter_config.json").read_text())
    plain = AutoPeftModelForCausalLM.from_pretrained(str(peft_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(peft_dir))
    ours = load_learnware(check_folder(lw, home=lwm_home), home=lwm_home)
    batch = ours.tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ours.model(**batch).logits
        got = plain(**batch).logits
        with ours.model.disable_adapter():
            base = ours.model(**batch).logits

    assert signed["base_model_name_or_path"] == tiny.MODEL_ID  # the id, never a local path
    assert tokenizer(TEXTS[0])["input_ids"] == ours.tokenizer(TEXTS[0])["input_ids"]
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(base, expected, atol=1e-5)  # the adapter did change the logits


def test_a_packaged_adapter_names_the_base_models_id_not_the_contributors_path(
    lwm_home: Home, tmp_path: Path
) -> None:
    adapter = train_lora_adapter(lwm_home, tmp_path / "adapter")  # plain peft: a local path
    card = LearnwareCard("packaged", "python", "text-generation", "", "MIT")
    key, _ = signing.generate_keypair()

    package = package_adapter(
        adapter, TEXTS, ContributeConfig(card), key, tmp_path / "lw", home=lwm_home, noise_seed=0
    )

    before = json.loads((adapter / "adapter_config.json").read_text())
    after = json.loads((package.folder / "adapter_config.json").read_text())
    assert before["base_model_name_or_path"] == str(lwm_home.root / "models" / "tiny-v1")
    assert after == {**before, "base_model_name_or_path": tiny.MODEL_ID}

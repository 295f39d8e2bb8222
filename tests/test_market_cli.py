"""``lwm market list/show/withdraw/submit`` and ``lwm package build --adapter`` against a
real market on loopback (TLS, SQLite, static checks; no smoke run, for time), each with
``--json``; versions, history and downloads as a contributor and a user see them.

CLI calls run ``client.cli.main`` in-process (``test_contribute.lwm``: same parsing, exit
codes and messages as the ``lwm`` script).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import (
    build_learnware,
    edit_adapter_config,
    random_rkme_spec,
    rkme_schema,
    train_lora_adapter,
    write_specs,
)
from market_fixtures import market_server
from test_contribute import lwm, one_line_error

from client.cli_user import print_matches
from client.user import private_search
from server.records import Role
from shared import signing
from shared.data import load_domain
from shared.learnware import verify_package
from shared.models import model_ref


@pytest.fixture(scope="module")
def market(tmp_path_factory, lwm_home):
    with market_server(tmp_path_factory.mktemp("catalogue"), lwm_home, run_smoke=False) as m:
        for name in ("bank", "clinic"):
            m.new_key(name, Role.CONTRIBUTOR)
        m.new_key("reader", Role.USER)
        yield m


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, lwm_home) -> Path:
    return train_lora_adapter(lwm_home, tmp_path_factory.mktemp("byo") / "adapter")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "finance.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in load_domain("finance")[:96]))
    return path


def market_args(market, name: str) -> list[str]:
    key = market.keys_dir / f"{name}.key"
    return ["--server", market.address, "--key", str(key), "--ca", str(market.layout.ca_cert)]


def run_json(monkeypatch, capsys, *args: str):
    code, out, err = lwm(monkeypatch, capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def build_args(adapter: Path, data: Path, market, lwm_home, out: Path, *extra: str) -> list[str]:
    return [
        "package", "build", "--adapter", str(adapter), "--data", str(data),
        "--name", "bank-notes", "--domain", "finance", "--task", "text-generation",
        "--license", "MIT", "--key", str(market.keys_dir / "bank.key"), "--base-model", "tiny",
        "--out", str(out), "--home", str(lwm_home.root), *extra,
    ]  # fmt: skip


def other_package(market, lwm_home, tmp: Path, key_name: str, seed: int, **changes) -> Path:
    """A signed package built directly (no CLI), by ``key_name``, with unique bytes."""
    key = signing.load_private_key(market.keys_dir / f"{key_name}.key")
    (tmp / f"p{seed}").mkdir()
    spec = random_rkme_spec(rkme_schema(lwm_home), seed=seed)
    return build_learnware(
        tmp / f"p{seed}" / "lw",
        adapter=train_lora_adapter(lwm_home, tmp / f"p{seed}" / "adapter"),
        spec_file=write_specs(tmp / f"p{seed}" / "spec.safetensors", [spec]),
        base=model_ref("tiny", lwm_home),
        private_key=key,
        **changes,
    )


# ---------------------------------------------------------------- bring your own adapter


def test_package_build_then_submit_twice_is_version_2_and_search_returns_it(
    market, adapter, data, lwm_home, tmp_path, monkeypatch, capsys
):
    built = run_json(
        monkeypatch, capsys, *build_args(adapter, data, market, lwm_home, tmp_path / "v1")
    )
    dp = built["manifest"]["dp"]
    assert {p["what"]: p["epsilon"] for p in dp["parts"]} == {"adapter": None, "spec:rkme": 4.0}
    assert dp["total"]["epsilon"] is None  # trained elsewhere: no DP claimed for the adapter
    bank_public = signing.load_private_key(market.keys_dir / "bank.key").public_key()
    assert verify_package(tmp_path / "v1", bank_public).manifest.name == "bank-notes"
    run_json(monkeypatch, capsys, *build_args(adapter, data, market, lwm_home, tmp_path / "v2"))

    first = run_json(
        monkeypatch, capsys, "market", "submit", str(tmp_path / "v1"), *market_args(market, "bank")
    )
    second = run_json(
        monkeypatch, capsys, "market", "submit", str(tmp_path / "v2"), *market_args(market, "bank")
    )
    clinic = market.client("clinic").submit(
        other_package(market, lwm_home, tmp_path, "clinic", 7, name="bank-notes")
    )

    assert (first["status"], first["version"], second["version"]) == ("USABLE", 1, 2)
    reader = market.client("reader")
    assert reader.get(clinic.id).version == 1  # another contributor's name: not a version
    query = random_rkme_spec(rkme_schema(lwm_home), seed=1)
    newest = {r.learnware.id for r in reader.search(query, top_k=50)}
    every = {r.learnware.id for r in reader.search(query, top_k=50, all_versions=True)}
    assert {second["id"], clinic.id} <= newest and first["id"] not in newest
    assert {first["id"], second["id"], clinic.id} <= every
    # lwm search shows each match's licence, total epsilon and version
    outcome = private_search(data, market.client("reader"), home=lwm_home, ledger=False)
    mine = [m for m in outcome.matches if m.id == second["id"]]
    assert [(m.license, m.total_epsilon, m.version) for m in mine] == [("MIT", None, 2)]
    print_matches(outcome)
    table = capsys.readouterr().out
    assert "licence" in table and "MIT" in table and "none (no DP)" in table


def test_an_adapter_the_policy_refuses_fails_before_any_model_loads(
    market, adapter, data, lwm_home, tmp_path, monkeypatch, capsys
):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes(
        (adapter / "adapter_model.safetensors").read_bytes()
    )
    edit_adapter_config(
        adapter / "adapter_config.json", bad / "adapter_config.json", target_modules=".*proj"
    )

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded for a refused adapter")

    monkeypatch.setattr("shared.models.load_causal_lm", no_models)
    monkeypatch.setattr("client.contribute.spec_maker", no_models)
    code, _, err = lwm(
        monkeypatch, capsys, *build_args(bad, data, market, lwm_home, tmp_path / "o")
    )

    assert code == 2 and "target_modules" in one_line_error(err)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- list, show, withdraw


def test_list_show_and_withdraw_with_versions_history_and_downloads(
    market, lwm_home, tmp_path, monkeypatch, capsys
):
    clinic = market.client("clinic")
    v1, v2 = (
        clinic.submit(other_package(market, lwm_home, tmp_path, "clinic", s, name="ward-notes"))
        for s in (11, 12)
    )
    market.client("reader").fetch(v2.id, tmp_path / "v2.tar")
    market.client("reader").fetch(v2.id, tmp_path / "again.tar")
    reader, mine = market_args(market, "reader"), market_args(market, "clinic")

    listed = run_json(monkeypatch, capsys, "market", "list", "--domain", "medicine", *reader)
    ward = [row for row in listed if row["name"] == "ward-notes"]
    assert [(r["id"], r["version"], r["downloads"]) for r in ward] == [(v2.id, 2, 2)]
    every = run_json(monkeypatch, capsys, "market", "list", "--mine", "--all-versions", *mine)
    assert [r["id"] for r in every if r["name"] == "ward-notes"] == [v1.id, v2.id]
    assert {r["contributor_key_id"] for r in every} == {clinic.key_id}
    shown = run_json(monkeypatch, capsys, "market", "show", v2.id, *reader)
    assert [(h["id"], h["version"]) for h in shown["history"]] == [(v2.id, 2), (v1.id, 1)]
    assert shown["signer"] == {"name": "clinic", "key_id": clinic.key_id}
    assert shown["checks"]["status"] == "USABLE"
    assert shown["privacy"]["total_epsilon"] is None
    assert [r["what"] for r in shown["privacy"]["releases"]] == ["spec:rkme", "adapter"]
    assert shown["downloads"] == 2 and shown["package_size"] > 0
    code, text, _ = lwm(monkeypatch, capsys, "market", "show", v2.id, *reader)
    assert code == 0 and f"history: v2 {v2.id} USABLE, v1 {v1.id} USABLE" in text

    gone = run_json(monkeypatch, capsys, "market", "withdraw", v2.id, "--reason", "bad data", *mine)

    assert (gone["status"], gone["version"]) == ("WITHDRAWN", 2)
    listed = run_json(monkeypatch, capsys, "market", "list", "--status", "usable", *reader)
    assert [r["id"] for r in listed if r["name"] == "ward-notes"] == [v1.id]  # v1 again
    code, _, err = lwm(monkeypatch, capsys, "market", "show", v2.id, *reader)
    assert code != 0 and "not available" in one_line_error(err)


def test_catalogue_refusals_are_one_line(market, tmp_path, monkeypatch, capsys):
    bank = market_args(market, "bank")
    cases = [
        (["market", "show", "no-such-id", *bank], "no-such-id"),
        (["market", "list", "--status", "gone", *bank], "--status"),
        (["market", "withdraw", "no-such-id", "--reason", "x", *bank], "no-such-id"),
        (["market", "withdraw", "no-such-id", "--reason", " ", *bank], "--reason"),
        (["market", "submit", str(tmp_path), *bank], "missing from"),
    ]
    for args, needle in cases:
        code, _, err = lwm(monkeypatch, capsys, *args)
        assert code != 0 and needle in one_line_error(err), args

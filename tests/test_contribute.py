"""One contributor, end to end: real tiny model, real BBC text, real market over TLS.

Every failure a contributor can hit is one line, a non-zero exit, and no package (whole or
partial) left behind. CLI tests run ``client.cli.main`` in-process (same parsing, exit codes
and messages as the ``lwm`` script, without a second interpreter loading torch).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from builders import flip_byte
from market_fixtures import market_server

from client.contribute import ContributeConfig, contribute, make_learnware
from client.finetune import FinetuneConfig
from client.market import Connection
from client.publish import LearnwareCard, SpecSettings
from server.records import Role
from shared import signing
from shared.data import load_domain
from shared.errors import SchemaMismatch, Unauthenticated
from shared.learnware import Manifest, verify_package
from shared.privacy import rdp_epsilon
from shared.proto import market_pb2 as pb
from shared.spec.record import load_specs

FAST = FinetuneConfig(steps=4, batch_size=8, max_tokens=64)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's ops are too small to gain from threads; on a shared 2-core machine a
    second thread mostly waits for the first (the perplexity test: 4.7 s with one, 34 s with
    two, measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def market(tmp_path_factory, lwm_home):
    tmp = tmp_path_factory.mktemp("contribute-market")
    with market_server(tmp, lwm_home) as m:
        m.new_key("bank", Role.CONTRIBUTOR)
        m.new_key("reader", Role.USER)
        m.new_key("stranger", None)  # a key the market does not know
        yield m


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "finance.jsonl"
    texts = load_domain("finance")[:96]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """Every temporary folder of this test goes here, so we can see nothing is left."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def config(**changes) -> ContributeConfig:
    card = LearnwareCard(
        name="bank-news",
        domain="finance",
        task="text-generation",
        description="LoRA on BBC business paragraphs.",
        license="MIT",
        contributor="bank",
    )
    base = ContributeConfig(
        card, base_model="tiny", spec=SpecSettings(("rkme",), 4.0), finetune=FAST
    )
    return replace(base, **changes)


def conn(market, name: str = "bank", address: str | None = None) -> Connection:
    key = market.keys_dir / f"{name}.key"
    return Connection(address or market.address, key_path=key, ca=market.layout.ca_cert)


def lwm(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``lwm ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from client.cli import main

    monkeypatch.setattr(sys, "argv", ["lwm", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def contribute_args(data: Path, market, lwm_home, *extra: str) -> list[str]:
    return [
        "contribute", str(data), "--name", "bank-news", "--domain", "finance",
        "--task", "text-generation", "--description", "BBC business", "--license", "MIT",
        "--base-model", "tiny", "--spec", "rkme", "--spec-epsilon", "4",
        "--steps", "3", "--key", str(market.keys_dir / "bank.key"),
        "--home", str(lwm_home.root), *extra,
    ]  # fmt: skip


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("lwm: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- happy paths


def test_contribute_through_the_market_ends_usable(market, data, lwm_home, scratch):
    cfg = config(finetune=replace(FAST, dp_epsilon=8.0, batch_size=16))

    verdict = contribute(data, cfg, conn(market), home=lwm_home, noise_seed=0)

    assert verdict.usable, verdict.reason
    info = market.client("reader").get(verdict.learnware_id)
    assert info.status == pb.LEARNWARE_STATUS_USABLE
    assert info.name == "bank-news" and info.domain == "finance"
    assert {p.what for p in info.dp.parts} == {"adapter", "spec:rkme"}
    assert verdict.manifest.dp.total.epsilon == pytest.approx(info.dp.total_epsilon)
    assert list(scratch.iterdir()) == []  # the submitted package was removed


def test_manifest_epsilons_are_the_accountants_and_the_total_their_rdp_sum(
    data, lwm_home, tmp_path
):
    cfg = config(spec=SpecSettings(("pave",), 2.0), finetune=replace(FAST, dp_epsilon=3.0))
    key, _ = signing.generate_keypair()

    package = make_learnware(data, cfg, key, tmp_path / "lw", home=lwm_home, noise_seed=1).folder

    manifest = verify_package(package, key.public_key()).manifest
    adapter, spec_part = manifest.dp.part("adapter"), manifest.dp.part("spec:pave")
    assert adapter is not None and spec_part is not None
    histories = {}
    for part in (adapter, spec_part):
        d = part.details
        histories[part.what] = [(d["noise_multiplier"], d["sample_rate"], d["steps"])]
        assert part.epsilon == pytest.approx(rdp_epsilon(histories[part.what], 1e-5), rel=1e-9)
    assert adapter.mechanism == "dp-sgd" and adapter.epsilon <= 3.0
    (spec,) = load_specs(package / "spec.safetensors")
    assert spec_part.epsilon == spec.privacy.epsilon == manifest.spec("pave").epsilon
    total = manifest.dp.total
    both = histories["adapter"] + histories["spec:pave"]
    assert total.epsilon == pytest.approx(rdp_epsilon(both, 1e-5), rel=1e-9)
    assert max(adapter.epsilon, spec_part.epsilon) < total.epsilon < 5.0  # RDP beats the sum
    assert (total.delta, total.accountant) == (1e-5, "rdp")


def test_without_dp_sgd_the_total_promises_nothing(data, lwm_home, tmp_path):
    key, _ = signing.generate_keypair()
    package = make_learnware(data, config(), key, tmp_path / "lw", home=lwm_home)
    assert package.manifest == Manifest.from_json((package.folder / "manifest.json").read_bytes())
    dp = package.manifest.dp
    assert dp.part("adapter").epsilon is None and dp.part("adapter").delta == 0.0
    assert dp.part("spec:rkme").epsilon == pytest.approx(4.0, rel=0.05)
    assert dp.total.epsilon is None and dp.total.delta == 0.0


def test_out_packages_and_package_verify_checks_it(
    market, data, lwm_home, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "lw"
    code, stdout, err = lwm(
        monkeypatch, capsys, *contribute_args(data, market, lwm_home, "--out", str(out))
    )
    assert code == 0, err
    assert "total epsilon none" in stdout and "NOT differentially private" in err
    pub = tmp_path / "bank.pub"
    signing.save_public_key(
        pub, signing.load_private_key(market.keys_dir / "bank.key").public_key()
    )

    code, stdout, _ = lwm(monkeypatch, capsys, "package", "verify", str(out), "--pub", str(pub))
    assert code == 0 and "signed by key" in stdout
    code, stdout, _ = lwm(monkeypatch, capsys, "package", "verify", str(out))
    assert code == 0 and "NOT checked" in stdout

    flip_byte(out / "adapter_model.safetensors")
    code, _, err = lwm(monkeypatch, capsys, "package", "verify", str(out), "--pub", str(pub))
    assert code == 11 and "tampered" in one_line_error(err)


# ---------------------------------------------------------------- failures


def _no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("training started although the arguments were bad")

    monkeypatch.setattr("client.contribute.finetune_lora", refuse)


@pytest.mark.parametrize(
    ("extra", "code", "says"),
    [
        (["--spec-epsilon", "0"], 4, "epsilon must be a finite number > 0"),
        (["--dp-sgd", "--train-epsilon", "-1"], 4, "epsilon must be a finite number > 0"),
        (["--spec", "nope"], 5, "unknown spec kind"),
        (["--name", "Bad Name!"], 2, "name must be"),
        (["--delta", "0.02"], 4, "delta=0.02 must be below 1/n = 1/96"),
        (["--dp-sgd", "--train-epsilon", "0.001"], 4, "cannot reach epsilon=0.001"),
        (["--spec-epsilon", "1"], 3, "an RKME spec at epsilon=1.0 needs at least 169 texts"),
    ],
)
def test_bad_arguments_fail_before_training(
    market, data, lwm_home, tmp_path, monkeypatch, capsys, extra, code, says
):
    _no_training(monkeypatch)
    out = tmp_path / "lw"
    args = contribute_args(data, market, lwm_home, "--out", str(out), *extra)
    got, _, err = lwm(monkeypatch, capsys, *args)
    assert got == code and says in one_line_error(err)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_data_is_one_line(market, lwm_home, tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n\xff\xfe not utf-8\n')
    for data in (tmp_path / "missing.jsonl", bad):
        out = tmp_path / "lw"
        code, _, err = lwm(
            monkeypatch, capsys, *contribute_args(data, market, lwm_home, "--out", str(out))
        )
        assert code == 3, err
        assert str(data.name) in one_line_error(err)
        assert not out.exists()


def test_base_model_the_market_does_not_accept_fails_before_training(
    market, data, lwm_home, tmp_path, scratch, monkeypatch, capsys
):
    from shared.models import load_causal_lm

    other = tmp_path / "other-base"
    lm = load_causal_lm("tiny", lwm_home)
    with __import__("torch").no_grad():
        lm.model.lm_head.weight.mul_(1.01)  # other weights, same architecture
    lm.model.save_pretrained(other)
    lm.tokenizer.save_pretrained(other)
    _no_training(monkeypatch)
    args = contribute_args(data, market, lwm_home, "--server", market.address)
    args[args.index("tiny")] = str(other)
    code, _, err = lwm(monkeypatch, capsys, *args, "--ca", str(market.layout.ca_cert))
    assert code == 5 and "does not accept base model" in one_line_error(err)
    with pytest.raises(SchemaMismatch):
        contribute(data, config(base_model=str(other)), conn(market), home=lwm_home)
    assert list(scratch.iterdir()) == []


def test_unreachable_market_fails_before_training(
    market, data, lwm_home, tmp_path, monkeypatch, capsys
):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _no_training(monkeypatch)
    args = contribute_args(data, market, lwm_home, "--server", f"localhost:{port}")
    code, _, err = lwm(monkeypatch, capsys, *args, "--ca", str(market.layout.ca_cert))
    assert code == 13 and "cannot reach the market" in one_line_error(err)


def test_refused_submission_leaves_no_package(market, data, lwm_home, scratch, monkeypatch, capsys):
    before = market.learnware_count()
    with pytest.raises(Unauthenticated):
        contribute(data, config(), conn(market, "stranger"), home=lwm_home)
    args = contribute_args(data, market, lwm_home, "--server", market.address)
    args[args.index("--key") + 1] = str(market.keys_dir / "stranger.key")
    code, _, err = lwm(monkeypatch, capsys, *args, "--ca", str(market.layout.ca_cert))
    assert code == 9 and "unknown or revoked key" in one_line_error(err)
    assert market.learnware_count() == before
    assert list(scratch.iterdir()) == []


def test_failure_after_training_leaves_nothing(data, lwm_home, tmp_path, scratch, monkeypatch):
    from client.specs import SpecMaker

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(SpecMaker, "make", broken)
    key, _ = signing.generate_keypair()
    out = tmp_path / "out" / "lw"
    with pytest.raises(OSError, match="disk full"):
        make_learnware(data, config(), key, out, home=lwm_home)
    assert not out.exists() and not list(out.parent.glob("*"))
    assert list(scratch.iterdir()) == []


def test_existing_output_folder_is_refused_first(
    market, data, lwm_home, tmp_path, monkeypatch, capsys
):
    _no_training(monkeypatch)
    out = tmp_path / "lw"
    out.mkdir()
    code, _, err = lwm(
        monkeypatch, capsys, *contribute_args(data, market, lwm_home, "--out", str(out))
    )
    assert code == 8 and "exists" in one_line_error(err)


def test_a_builtin_base_the_market_does_not_accept_is_refused_before_it_is_converted(
    tmp_path, lwm_home
):
    """smollm2-135m converts for about a minute on first use: a market that accepts only
    tiny refuses it by model id first (it used to convert, then refuse)."""
    from client.contribute import accepted_base
    from shared.home import Home
    from shared.models import model_ref

    fresh = Home.resolve(str(tmp_path / "fresh-home"))
    with pytest.raises(SchemaMismatch, match="does not accept base model"):
        accepted_base("smollm2-135m", fresh, [model_ref("tiny", lwm_home)])
    assert not (fresh.root / "models").exists()

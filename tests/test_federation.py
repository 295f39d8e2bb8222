"""Flower federation: the holder's ClientApp called directly, one real simulated run
(2 holders, Ray, tiny model) whose federated learnware a real TLS market accepts as USABLE,
and a holder whose data breaks at run time: left out down to min_holders, else no package.
Every simulated run goes through ``flwr run`` on a local SuperLink: no deprecation warning
in its output, and no process of it left running afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from market_fixtures import market_server

from client.federation.client_app import history_of, make_client_app
from client.federation.config import FederationConfig, Holder, MarketSettings
from client.federation.server_app import initial_lora, merge_specs
from client.finetune import FinetuneConfig
from client.publish import LearnwareCard, SpecSettings
from server.records import Role
from shared import signing
from shared.data import load_domain
from shared.errors import InvalidInput, LwmError, PermissionDenied, PrivacyError
from shared.learnware import verify_package
from shared.models import load_causal_lm
from shared.models.device import resolve
from shared.privacy import DPReport
from shared.proto import market_pb2 as pb
from shared.spec.record import Specification


@pytest.fixture(scope="module")
def holders_data(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fed-data")
    texts = load_domain("finance")[:80]
    paths = []
    for i, part in enumerate((texts[:40], texts[40:])):
        path = folder / f"holder{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        paths.append(path)
    return paths


def fed_config(paths: list[Path], key: Path, home: Path, **changes) -> FederationConfig:
    """Two banks' federation; ``changes`` name a section's field by its FED.toml key
    (``out``, ``market_address``, ``ca``, ``local_steps``, ``train_epsilon``,
    ``spec_kinds``) or a top-level one (``rounds``, ``min_holders``)."""
    out = changes.pop("out", home / "unused-out")
    address, ca = changes.pop("market_address", None), changes.pop("ca", None)
    training = FinetuneConfig(
        steps=changes.pop("local_steps", 3),
        batch_size=8,
        max_tokens=48,
        dp_epsilon=changes.pop("train_epsilon", None),
    )
    kinds = changes.pop("spec_kinds", ("rkme",))
    return FederationConfig(
        holders=tuple(Holder(f"bank-{i}", p) for i, p in enumerate(paths)),
        learnware=LearnwareCard(
            name="region-news",
            domain="finance",
            task="text-generation",
            description="Federated LoRA over two banks' BBC business paragraphs.",
            license="MIT",
            contributor="coordinator",
        ),
        market=MarketSettings(key=key, address=address, ca=ca, out=out),
        training=training,
        spec=SpecSettings(kinds, 4.0),
        base_model="tiny",
        home=home,
        **{"rounds": 2, **changes},
    )


def flower_processes_under(root: Path) -> list[str]:
    """The live processes whose FLWR_HOME lies under ``root`` (a run's SuperLink, SuperExec,
    simulation, Ray): none may outlive ``run_federation``."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            home = p.environ().get("FLWR_HOME", "")
            if home.startswith(str(root)) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(p.cmdline()))
        except psutil.Error:
            continue
    return found


@pytest.fixture
def run_folders(tmp_path, monkeypatch) -> Path:
    """``run_federation``'s temporary run folders (FLWR_HOME inside) go under this test's
    folder; after the test no process of them may be alive."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    left = flower_processes_under(root)
    assert not left, f"processes of the run left running: {left}"


def assert_no_deprecation(captured: str) -> None:
    """Flower's simulation path in use is its current one: nothing says deprecated."""
    lowered = captured.lower()
    assert "deprecat" not in lowered and "futurewarning" not in lowered, captured[-3000:]


def start_lora(config: FederationConfig, home) -> dict:
    return initial_lora(config, load_causal_lm(config.base_model, home))


@pytest.fixture(scope="module")
def coordinator_key(tmp_path_factory) -> Path:
    key, _ = signing.generate_keypair()
    path = tmp_path_factory.mktemp("fed-keys") / "coordinator.key"
    signing.save_private_key(path, key)
    return path


def test_client_app_train_changes_lora_and_reports_examples(
    holders_data, coordinator_key, lwm_home, monkeypatch
):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    # A message is normally made by a running ServerApp, whose identity Flower sets.
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)

    config = fed_config(holders_data, coordinator_key, lwm_home.root)
    start = start_lora(config, lwm_home)
    app = make_client_app(config)
    msg = Message(
        content=RecordDict(
            {"arrays": ArrayRecord(start), "config": ConfigRecord({"server-round": 1})}
        ),
        message_type=MessageType.TRAIN,
        dst_node_id=1,
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )

    reply = app(msg, context)

    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["num-examples"] == 40
    after = reply.content["arrays"].to_torch_state_dict()
    assert set(after) == set(start)
    moved = [k for k in start if "lora_B" in k and not torch.equal(start[k], after[k])]
    assert moved, "local training did not move lora_B"
    assert all(torch.count_nonzero(start[k]) == 0 for k in start if "lora_B" in k)


def test_client_app_dp_accountant_carries_across_rounds(
    holders_data, coordinator_key, lwm_home, monkeypatch
):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    config = fed_config(holders_data, coordinator_key, lwm_home.root, train_epsilon=8.0)
    app = make_client_app(config)
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    arrays = ArrayRecord(start_lora(config, lwm_home))
    epsilons = []
    for server_round in (1, 2):
        msg = Message(
            content=RecordDict(
                {"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}
            ),
            message_type=MessageType.TRAIN,
            dst_node_id=1,
        )
        reply = app(msg, context)
        assert not reply.has_error(), reply.error
        arrays = reply.content["arrays"]
        epsilons.append(float(reply.content["metrics"]["epsilon"]))
        # The reply carries the accountant so far: the server accounts from train replies.
        sent = history_of(reply.content["accountant"])
        assert sent and sent == history_of(context.state["accountant"])

    # Round 2 continues round 1's accountant: the epsilon grows and ends at the budget.
    assert 0 < epsilons[0] < epsilons[1] <= 8.0 + 1e-6
    assert epsilons[1] == pytest.approx(8.0, rel=0.05)
    # opacus merges equal (sigma, rate) entries: one entry of both rounds' steps.
    assert sum(context.state["accountant"]["steps"]) == 2 * config.local_steps


def test_a_holder_whose_budget_cannot_hold_fails_before_it_trains(
    holders_data, coordinator_key, lwm_home
):
    """Each holder checks its own releases on its own machine before its first step: delta
    below 1/n, and DP-SGD noise over the whole run that can be calibrated at all."""
    from client.contribute import load_texts
    from client.federation.client_app import train_round

    texts = load_texts(holders_data[0])
    base = load_causal_lm("tiny", lwm_home)
    for changes, message in (
        ({"delta": 0.05}, r"delta=0.05 must be below 1/n = 1/40"),
        ({"train_epsilon": 0.001}, r"cannot reach epsilon=0.001"),
    ):
        config = fed_config(holders_data, coordinator_key, lwm_home.root, **changes)
        with pytest.raises(PrivacyError, match=message):
            train_round(config, base, None, texts, seed=0)


def test_merge_specs_weights_by_n_and_combines_noise():
    import numpy as np

    def spec(value: float, n: int, std: float) -> Specification:
        report = DPReport("gaussian", 4.0, 1e-5, 1.16, noise_std=std)
        return Specification("rkme", "s1", np.full(4, value, dtype=np.float32), n, report)

    merged = merge_specs([spec(1.0, 30, 0.1), spec(4.0, 10, 0.3)])

    assert merged.n == 40
    assert np.allclose(merged.vector, 0.75 * 1.0 + 0.25 * 4.0)
    assert merged.privacy.noise_std == pytest.approx(((0.75 * 0.1) ** 2 + (0.25 * 0.3) ** 2) ** 0.5)
    assert merged.privacy.epsilon == 4.0


def test_config_refuses_what_cannot_work(holders_data, coordinator_key, lwm_home, tmp_path):
    with pytest.raises(InvalidInput, match="at least 2 holders"):
        fed_config(holders_data[:1], coordinator_key, lwm_home.root)
    with pytest.raises(PrivacyError):
        fed_config(holders_data, coordinator_key, lwm_home.root, train_epsilon=0.0)
    with pytest.raises(InvalidInput, match="does not exist"):
        fed_config([holders_data[0], tmp_path / "nope.jsonl"], coordinator_key, lwm_home.root)
    toml = tmp_path / "fed.toml"
    toml.write_text(
        'rounds = 1\n[learnware]\nname = "x"\ndomain = "finance"\ntask = "t"\nlicense = "MIT"\n'
        f'[market]\nkey = "{coordinator_key}"\nout = "pkg"\n'
        f'[[holders]]\nname = "a"\ndata = "{holders_data[0]}"\n'
        f'[[holders]]\nname = "b"\ndata = "{holders_data[1]}"\n'
    )
    loaded = FederationConfig.from_toml(toml)
    assert loaded.rounds == 1 and loaded.market.out == tmp_path / "pkg"
    assert loaded.learnware.contributor == "coordinator" and loaded.training.steps == 5
    assert loaded.placement() == resolve("auto")  # each holder's own best device, float32
    toml.write_text('device = "tpu"\n' + toml.read_text())
    with pytest.raises(InvalidInput, match="'tpu': use one of auto, cpu, cuda, mps"):
        FederationConfig.from_toml(toml)
    toml.write_text("rounds = [")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        FederationConfig.from_toml(toml)


def test_config_round_trips_through_fed_toml(holders_data, coordinator_key, tmp_path):
    """``run_federation`` hands the config to Flower's processes as FED.toml: every setting
    must survive ``to_dict`` then ``from_toml``, the ones FED.toml leaves to defaults too."""
    import tomli_w

    from shared.data.columns import DataSource

    config = fed_config(holders_data, coordinator_key, tmp_path, min_holders=2, rounds=3)
    config = replace(
        config,
        holders=(config.holders[0], Holder("b", DataSource(holders_data[1], text_column="t"))),
        device="cpu",
        dtype="bfloat16",
        training=replace(
            config.training, lr=0.1, clip_norm=0.05, optimizer="sgd", seed=7, dp_epsilon=6.0
        ),
    )
    toml = tmp_path / "elsewhere" / "FED.toml"
    toml.parent.mkdir()
    toml.write_text(tomli_w.dumps(config.to_dict()))

    assert FederationConfig.from_toml(toml) == config
    in_memory = replace(config, holders=(config.holders[0], Holder("c", ("a text",))))
    with pytest.raises(InvalidInput, match="texts in memory have no FED.toml form"):
        in_memory.to_dict()


def test_local_superlink_stops_what_flower_detached(tmp_path):
    """The SuperLink, and a process started in a session of its own with the run's
    FLWR_HOME (as Flower starts its SuperExec), are both gone when the run ends."""
    from client.federation.run import flower_env, local_superlink

    env = flower_env(tmp_path / "flwr-home")
    with local_superlink(tmp_path, env) as port:
        detached = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            env=env,
            start_new_session=True,
        )
        assert flower_processes_under(tmp_path), "the SuperLink is not running"
        assert f'address = "127.0.0.1:{port}"' in (tmp_path / "flwr-home/config.toml").read_text()

    detached.wait(timeout=5)  # ended (psutil may already have reaped it)
    assert flower_processes_under(tmp_path) == []


def test_config_min_holders_and_what_each_machine_needs(
    holders_data, coordinator_key, lwm_home, tmp_path
):
    assert fed_config(holders_data, coordinator_key, lwm_home.root).quorum == 2
    for bad in (1, 3, True, "2"):
        with pytest.raises(InvalidInput, match="min_holders must be an int from 2 to"):
            fed_config(holders_data, coordinator_key, lwm_home.root, min_holders=bad)
    missing = tmp_path / "elsewhere.jsonl"  # holder 1's data lives on another machine
    toml = tmp_path / "fed.toml"
    toml.write_text(
        'min_holders = 2\n[learnware]\nname = "x"\ndomain = "finance"\ntask = "t"\n'
        f'license = "MIT"\n[market]\nkey = "{coordinator_key}"\nout = "pkg"\n'
        f'[[holders]]\nname = "a"\ndata = "{holders_data[0]}"\n'
        f'[[holders]]\nname = "b"\ndata = "{missing}"\n'
    )
    with pytest.raises(InvalidInput, match="'b': data .* does not exist"):
        FederationConfig.from_toml(toml)  # one machine must hold everything
    assert FederationConfig.from_toml(toml, machine="coordinator").quorum == 2
    assert FederationConfig.from_toml(toml, machine=0).holders[1].data == missing
    with pytest.raises(InvalidInput, match="does not exist"):
        FederationConfig.from_toml(toml, machine=1)
    with pytest.raises(InvalidInput, match="partition-id 2 names no holder"):
        FederationConfig.from_toml(toml, machine=2)


def test_holder_data_names_its_split_and_columns(holders_data, coordinator_key, tmp_path):
    """A holder's [[holders]] table may name a split and columns, as ``--split`` and
    ``--text-column`` do on the command line; each holder reads only its own split."""
    import datasets

    from client.federation.client_app import AppCache, holder_texts

    saved = tmp_path / "bank_b_saved"
    rows = {"train": [{"body": "bank b train"}], "test": [{"body": "bank b test"}]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()}).save_to_disk(
        str(saved)
    )
    toml = tmp_path / "fed.toml"
    toml.write_text(
        'rounds = 1\n[learnware]\nname = "x"\ndomain = "finance"\ntask = "t"\nlicense = "MIT"\n'
        f'[market]\nkey = "{coordinator_key}"\nout = "pkg"\n'
        f'[[holders]]\nname = "a"\ndata = "{holders_data[0]}"\n'
        '[[holders]]\nname = "b"\ndata = "bank_b_saved"\nsplit = "test"\ntext_column = "body"\n'
    )
    config = FederationConfig.from_toml(toml)

    assert holder_texts(config, 1, AppCache()) == ["bank b test"]
    toml.write_text(toml.read_text().replace('split = "test"', "split = 3"))
    with pytest.raises(InvalidInput, match=r"holders\[1\]\.split must be a name, got 3"):
        FederationConfig.from_toml(toml)


def test_deployed_apps_read_fed_toml_from_node_config_else_run_config(
    holders_data, coordinator_key, tmp_path
):
    from types import SimpleNamespace

    from client.federation.client_app import deployed_config

    def toml(name: str, rounds: int) -> Path:
        path = tmp_path / name
        path.write_text(
            f'rounds = {rounds}\n[learnware]\nname = "x"\ndomain = "finance"\ntask = "t"\n'
            f'license = "MIT"\n[market]\nkey = "{coordinator_key}"\nout = "pkg"\n'
            f'[[holders]]\nname = "a"\ndata = "{holders_data[0]}"\n'
            f'[[holders]]\nname = "b"\ndata = "{holders_data[1]}"\n'
        )
        return path

    shared, own = toml("run.toml", 1), toml("node.toml", 3)
    run_only = SimpleNamespace(node_config={"partition-id": 1}, run_config={"config": str(shared)})
    assert deployed_config(run_only, 1).rounds == 1
    node = SimpleNamespace(
        node_config={"partition-id": 1, "config": str(own)}, run_config={"config": str(shared)}
    )
    assert deployed_config(node, 1).rounds == 3
    with pytest.raises(RuntimeError, match="no federation config: pass --run-config"):
        deployed_config(SimpleNamespace(node_config={}, run_config={"config": ""}), "coordinator")
    gone = SimpleNamespace(node_config={}, run_config={"config": str(tmp_path / "gone.toml")})
    with pytest.raises(InvalidInput, match="is not a file on this machine"):
        deployed_config(gone, "coordinator")


def test_simulated_federation_submits_a_usable_learnware(
    holders_data, lwm_home, tmp_path, run_folders
):
    from client.federation.run import run_federation

    with market_server(tmp_path, lwm_home, run_smoke=False) as market:
        market.new_key("coordinator", Role.CONTRIBUTOR)
        market.new_key("reader", Role.USER)
        config = fed_config(
            holders_data,
            market.keys_dir / "coordinator.key",
            lwm_home.root,
            out=None,
            market_address=market.address,
            ca=market.layout.ca_cert,
            rounds=2,
            train_epsilon=8.0,
            spec_kinds=("rkme", "pave"),
        )
        started = time.perf_counter()
        result = run_federation(config)
        seconds = time.perf_counter() - started

        verdict = result.published.verdict
        assert verdict is not None and verdict.status == "USABLE", verdict
        assert result.holders == 2
        info = market.client("reader").get(verdict.learnware_id)
        assert info.status == pb.LEARNWARE_STATUS_USABLE
        assert info.name == "region-news"
        assert {p.what for p in info.dp.parts} == {"adapter", "spec:rkme", "spec:pave"}
        manifest = verdict.manifest
        assert [s.kind for s in manifest.specs] == ["rkme", "pave"]
        rkme_n, pave_n = (s.n for s in manifest.specs)
        assert pave_n == 80 and abs(rkme_n - 80) < 60  # RKME publishes a DP count
        adapter = manifest.dp.part("adapter")
        assert adapter is not None and adapter.epsilon == pytest.approx(8.0, rel=0.05)
        assert manifest.dp.total.epsilon is not None
        assert manifest.dp.total.epsilon > adapter.epsilon
        print(f"simulated federation: {seconds:.1f} s")


def test_a_coordinator_key_that_may_not_submit_is_refused_before_flower_starts(
    holders_data, lwm_home, tmp_path, run_folders
):
    from client.federation.run import run_federation

    with market_server(tmp_path, lwm_home, run_smoke=False) as market:
        market.new_key("reader", Role.USER)
        config = fed_config(
            holders_data,
            market.keys_dir / "reader.key",
            lwm_home.root,
            out=None,
            market_address=market.address,
            ca=market.layout.ca_cert,
        )

        with pytest.raises(PermissionDenied, match=r"\(reader\) has the user role, and submit"):
            run_federation(config)

    assert list(run_folders.glob("lwm-federate-*")) == []  # Flower never started


def three_holders_one_broken(
    folder: Path, key: Path, home: Path, min_holders: int
) -> tuple[FederationConfig, list[int]]:
    """Three holders whose config validates; then holder 2's file turns into non-UTF-8 bytes.

    A real failure at train time (``DataError`` in the holder's ClientApp), no mock.
    Returns the config and each holder's number of texts.
    """
    texts = load_domain("finance")[:72]
    parts = [texts[:24], texts[24:48], texts[48:]]
    paths = []
    for i, part in enumerate(parts):
        path = folder / f"holder{i}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
        paths.append(path)
    config = fed_config(
        paths,
        key,
        home,
        out=folder / "package",
        rounds=1,
        local_steps=2,
        min_holders=min_holders,
    )
    paths[2].write_bytes(b"\xff\xfe not a jsonl file \x00\n")
    return config, [len(p) for p in parts]


def test_a_holder_failing_mid_run_is_left_out_above_min_holders(
    coordinator_key, lwm_home, tmp_path, run_folders, capfd
):
    from client.federation.run import run_federation

    config, sizes = three_holders_one_broken(tmp_path, coordinator_key, lwm_home.root, 2)

    result = run_federation(config)

    captured = capfd.readouterr()
    assert_no_deprecation(captured.out + captured.err)
    assert "lwm: wrote the signed package" in captured.out + captured.err  # Flower's log

    assert result.holders == 2 and result.trained == 2 and result.published.verdict is None
    verified = verify_package(
        result.published.package.folder, signing.load_private_key(coordinator_key).public_key()
    )
    assert verified.path == config.market.out
    assert verified.manifest == result.published.package.manifest
    manifest = verified.manifest
    assert abs(manifest.specs[0].n - (sizes[0] + sizes[1])) < 60  # a DP count of 2 holders' 48
    adapter = manifest.dp.part("adapter")
    assert adapter is not None and adapter.details["holders"] == 2
    spec = manifest.dp.part("spec:rkme")
    assert spec is not None and spec.details["merged_holders"] == 2


def test_a_holder_failing_mid_run_below_min_holders_leaves_no_package(
    coordinator_key, lwm_home, tmp_path, run_folders
):
    from client.federation.run import run_federation

    config, _ = three_holders_one_broken(tmp_path, coordinator_key, lwm_home.root, 3)

    with pytest.raises(LwmError, match=r"only 2 holder\(s\) trained, min_holders is 3") as err:
        run_federation(config)
    assert config.market.out is not None and not config.market.out.exists()
    # One line naming the holder's own error, not Ray's traceback.
    assert "holder2.jsonl: not UTF-8" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("reason", "short"),
    [
        (  # the deployment engine's SuperNode
            "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException "
            "ClientAppException occurred. Message: h2.jsonl: not UTF-8'>",
            "h2.jsonl: not UTF-8",
        ),
        (  # the simulation engine: Ray's chained traceback
            "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::run()\n"
            '  File "x.py", line 1\nDataError: h2.jsonl: not UTF-8\n\nflwr.ClientAppException:'
            " \nException ClientAppException occurred. Message: h2.jsonl: not UTF-8'>",
            "h2.jsonl: not UTF-8",
        ),
        ("<class 'ValueError'>:<'bad value'>", "ValueError: bad value"),
        (None, "no reason given"),
    ],
)
def test_short_reason_keeps_the_holders_own_error(reason, short):
    from client.federation.strategy import short_reason

    assert short_reason(reason) == short


def test_cli_federate_bad_config_is_one_line_error(tmp_path, monkeypatch, capsys):
    from client.cli import main

    toml = tmp_path / "fed.toml"
    toml.write_text('rounds = 0\n[learnware]\nname = "x"\n')
    monkeypatch.setattr(sys, "argv", ["lwm", "federate", "--config", str(toml)])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code not in (0, None)
    lines = [line for line in err.splitlines() if line.startswith("lwm: error:")]
    assert len(lines) == 1, err

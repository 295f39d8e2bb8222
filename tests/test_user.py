"""The user's side against a real market (TLS, loopback) holding learnwares of real domains.

Four contributors' learnwares are built from real demo text: an RKME spec (MiniLM, epsilon 4)
of 150 holder texts and a LoRA of ``tiny`` trained 50 steps on the same texts. Users hold
disjoint texts of each domain. The market's smoke run is off here (test_server covers it):
it costs a subprocess per submission and is not what these tests are about.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from builders import build_learnware, flip_byte, train_lora_adapter, write_specs
from market_fixtures import market_server

from client.evaluate import evaluate as evaluate_learnware
from client.market import MarketClient
from client.run import generate, load_learnware
from client.specs import SpecMaker
from client.trust import TrustStore, refuse_revoked
from client.user import fetch_learnware, private_search, resolve_base_model
from server.records import Role
from shared import signing
from shared.data import load_domain, split
from shared.errors import AlreadyExists, IntegrityError, LwmError, ModelUnavailable, NotFound
from shared.learnware import pack_tar
from shared.models import model_ref
from shared.privacy import PrivacyBudget
from shared.proto import market_pb2 as pb

DOMAINS = {"medicine": "medicine", "finance": "finance", "math": "math", "law/licenses": "law"}
HOLDER_TEXTS, USER_TEXTS = 150, 60


def train_domain_adapter(home, out_dir: Path, texts: list[str], *, steps: int = 50, seed: int = 0):
    """A LoRA of ``tiny`` (r=8, attention + MLP) trained on ``texts``: 50 AdamW steps at
    lr 5e-3, batches of 8 texts cut to 64 tokens. Measured on 4 real domains: held-out
    perplexity of the own domain drops from ~2,070 (base) to 1,500-1,850, ~2 s per adapter
    on one thread. Deterministic for a seed; torch's global RNG is left as it was."""
    import torch
    from peft import LoraConfig, get_peft_model

    from shared.models import load_causal_lm

    lm = load_causal_lm("tiny", home)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=modules, lora_dropout=0.0, task_type="CAUSAL_LM"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(lm.model, config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
        model.train()
        for _ in range(steps):
            picked = torch.randint(len(texts), (8,)).tolist()
            batch = lm.tokenizer(
                [texts[i] for i in picked],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=64,
            )
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


@pytest.fixture(scope="module")
def one_thread():
    """Two cores shared with others: torch's spinning threads made training ~100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, lwm_home, one_thread):
    tmp = tmp_path_factory.mktemp("user")
    with market_server(tmp, lwm_home, run_smoke=False) as market:
        alice = market.new_key("alice", Role.CONTRIBUTOR)
        market.new_key("uma", Role.USER)
        maker = SpecMaker(market.client("uma").schema().schema, lwm_home)
        base = model_ref("tiny", lwm_home)
        users, ids = {}, {}
        for domain, slug in DOMAINS.items():
            holder, users[slug] = split(load_domain(domain), HOLDER_TEXTS, USER_TEXTS, seed=1)
            folder = tmp / slug
            folder.mkdir()
            spec = maker.make(holder, "rkme", PrivacyBudget(4.0), noise_seed=1)
            package = build_learnware(
                folder / "lw",
                adapter=train_domain_adapter(lwm_home, folder / "adapter", holder),
                spec_file=write_specs(folder / "spec.safetensors", [spec]),
                base=base,
                private_key=alice,
                name=f"{slug}-lora",
                domain=slug,
            )
            reply = market.client("alice").submit(package)
            assert reply.status == pb.LEARNWARE_STATUS_USABLE, reply.reason
            ids[slug] = reply.id
        with market.client("uma") as uma:
            yield {
                "market": market,
                "tmp": tmp,
                "maker": maker,
                "users": users,
                "ids": ids,
                "uma": uma,
            }


def _uma(world) -> MarketClient:
    return world["uma"]


def _nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- search, fetch, run


def test_each_users_data_finds_its_own_domain_first(world, lwm_home):
    for slug, texts in world["users"].items():
        outcome = private_search(texts, _uma(world), kind="rkme", maker=world["maker"])
        assert outcome.matches[0].domain == slug, [m.domain for m in outcome.matches]
        assert outcome.matches[0].id == world["ids"][slug]
        assert outcome.epsilon == 4.0 and outcome.n_texts == USER_TEXTS
        assert outcome.spec_seconds > 0 and outcome.network_seconds > 0
        assert [m.rank for m in outcome.matches] == list(range(1, len(DOMAINS) + 1))
        assert outcome.confidence is not None and outcome.confidence.method == "rkme"
        assert 0 < outcome.confidence.probability <= 1 and outcome.confidence.margin > 0
    filtered = private_search(
        world["users"]["math"], _uma(world), domain="finance", home=lwm_home
    )
    assert [m.domain for m in filtered.matches] == ["finance"]


def test_the_fetched_learnware_beats_the_base_model(world, lwm_home):
    for slug, texts in world["users"].items():
        top = private_search(texts, _uma(world), maker=world["maker"]).matches[0]
        out = world["tmp"] / "fetched" / slug
        fetched = fetch_learnware(_uma(world), top.id, out, home=lwm_home)
        assert fetched.path == out and fetched.manifest.domain == slug
        assert pack_tar(out) == pack_tar(world["tmp"] / slug / "lw")
        learnware = load_learnware(out, home=lwm_home)
        scores = evaluate_learnware(learnware, [_text(t) for t in texts], with_base=True)
        assert scores.base is not None
        assert scores.learnware.perplexity < 0.95 * scores.base.perplexity, (slug, scores)
    assert generate(learnware, "The licence grants", max_new_tokens=5).text


def test_loading_an_id_checks_the_package_once(world, lwm_home, monkeypatch):
    import client.user

    checked: list[Path] = []
    real = client.user.verify_package

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        checked.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(client.user, "verify_package", counting)
    learnware_id = world["ids"]["law"]
    cached = lwm_home.folder("learnwares") / learnware_id
    shutil.rmtree(cached, ignore_errors=True)
    fetched = load_learnware(learnware_id, home=lwm_home, conn=_uma(world))
    assert fetched.path == cached and len(checked) == 1, checked  # at fetch, with the key
    checked.clear()
    again = load_learnware(learnware_id, home=lwm_home, conn=_uma(world))
    assert checked == [cached] and again.manifest == fetched.manifest  # the cache, re-hashed


def _text(text: str):
    from shared.data import Record

    return Record(text=text)


# ---------------------------------------------------------------- refusals


def test_a_tampered_blob_on_the_market_is_refused(world, lwm_home):
    market = world["market"]
    record = market.running.market.store.get(world["ids"]["finance"])
    blob = market.running.market.blobs.path_of(record.package_sha256)
    original = blob.read_bytes()
    blob.chmod(0o644)
    out = world["tmp"] / "tampered-blob"
    try:
        flip_byte(blob, index=len(original) // 2)
        with pytest.raises(IntegrityError, match="does not match the market's size/sha256"):
            fetch_learnware(_uma(world), record.id, out, home=lwm_home)
    finally:
        blob.write_bytes(original)
    _nothing_left(out)


def test_a_partial_download_resumes_and_a_tampered_one_is_refused(world, lwm_home):
    learnware_id = world["ids"]["math"]
    tar = pack_tar(world["tmp"] / "math" / "lw")
    for name, flip in (("resumed", False), ("tampered-part", True)):
        out = world["tmp"] / name
        staging = out.parent / f".{out.name}.fetch-{learnware_id}"
        staging.mkdir()
        part = bytearray(tar[:4000])
        if flip:
            part[600] ^= 0x01
        (staging / "package.tar.part").write_bytes(bytes(part))
        if not flip:
            fetch_learnware(_uma(world), learnware_id, out, home=lwm_home)
            assert pack_tar(out) == tar and not staging.exists()
            continue
        with pytest.raises(IntegrityError, match="does not match"):
            fetch_learnware(_uma(world), learnware_id, out, home=lwm_home)
        _nothing_left(out)


class _SwappedKeyClient(MarketClient):
    """A market that announces another contributor key than the one that signed."""

    def __init__(self, conn, public_key: bytes, key_id: str) -> None:
        super().__init__(conn)
        self._public_key, self._key_id = public_key, key_id

    def fetch(self, learnware_id, out_tar):
        header = super().fetch(learnware_id, out_tar)
        header.contributor_public_key = self._public_key
        header.contributor_key_id = self._key_id
        return header


def test_a_package_not_signed_by_the_announced_key_is_refused(world, lwm_home):
    mallory = signing.public_key_bytes(signing.generate_keypair()[1])
    conn = _uma(world).conn
    cases = [
        (signing.key_id(mallory), "signature"),  # consistent key + id, wrong signer
        ("0123456789abcdef", "hashes to key id"),  # key id the key does not hash to
    ]
    for key_id, needle in cases:
        out = world["tmp"] / f"swapped-{key_id}"
        trust = TrustStore(world["tmp"] / f"trust-{key_id}.json")  # first use: no pin refuses
        with pytest.raises(IntegrityError, match=needle) as excinfo:
            fetch_learnware(
                _SwappedKeyClient(conn, mallory, key_id),
                world["ids"]["law"],
                out,
                home=lwm_home,
                trust=trust,
            )
        assert "download deleted" in str(excinfo.value)
        _nothing_left(out)


def test_a_revoked_contributor_key_is_refused(world, lwm_home, tmp_path):
    market = world["market"]
    carol = market.new_key("carol", Role.CONTRIBUTOR)
    lw = build_learnware(
        tmp_path / "lw",
        adapter=train_lora_adapter(lwm_home, tmp_path / "adapter"),
        spec_file=world["tmp"] / "medicine" / "spec.safetensors",
        base=model_ref("tiny", lwm_home),
        private_key=carol,
        name="carol-notes",
    )
    learnware_id = market.client("carol").submit(lw).id
    carol_id = signing.key_id(carol.public_key())
    market.client("admin").revoke_key(carol_id, "key stolen")
    # The market refuses to serve it; a user's own list refuses it before any download.
    out = tmp_path / "out"
    with pytest.raises(LwmError, match=f"contributor key {carol_id} .* was revoked") as refused:
        fetch_learnware(_uma(world), learnware_id, out, home=lwm_home)
    assert refused.value.status == "FAILED_PRECONDITION"
    _nothing_left(out)
    revoked = {k.key_id for k in market.client("admin").list_keys(True) if k.revoked}
    with pytest.raises(IntegrityError, match=f"{carol_id} is on your revoked-keys list"):
        fetch_learnware(_uma(world), learnware_id, out, home=lwm_home, revoked_keys=revoked)
    _nothing_left(out)
    with pytest.raises(IntegrityError, match="on your revoked-keys list"):
        refuse_revoked(carol_id, revoked)


def test_a_base_model_the_user_lacks_is_refused_before_anything_loads(world, lwm_home, tmp_path):
    import torch

    from shared.models import load_causal_lm

    other = load_causal_lm("tiny", lwm_home)  # the user's "tiny" has other weights
    with torch.no_grad():
        other.model.model.embed_tokens.weight.add_(0.01)
    other.model.save_pretrained(tmp_path / "my-tiny")
    other.tokenizer.save_pretrained(tmp_path / "my-tiny")
    out = tmp_path / "out"
    with pytest.raises(ModelUnavailable, match="needs base model tiny-llama-v1 with weights"):
        fetch_learnware(
            _uma(world), world["ids"]["math"], out, home=lwm_home, base_model=tmp_path / "my-tiny"
        )
    _nothing_left(out)
    with pytest.raises(ModelUnavailable, match="not a built-in model here: pass --base-model"):
        resolve_base_model("acme/llama-70b", "ab" * 32, lwm_home)


def test_fetch_refuses_a_non_empty_folder_and_an_unknown_id(world, lwm_home, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(AlreadyExists):
        fetch_learnware(_uma(world), world["ids"]["math"], tmp_path / "full", home=lwm_home)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    with pytest.raises(NotFound):
        fetch_learnware(_uma(world), "0" * 32, tmp_path / "none", home=lwm_home)
    _nothing_left(tmp_path / "none")


# ---------------------------------------------------------------- the CLI


def lwm(world, home, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LWM_HOME": str(home.root), "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lwm {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


def _market_args(world) -> list[str]:
    market = world["market"]
    key = str(market.keys_dir / "uma.key")
    return ["--server", market.address, "--key", key, "--ca", str(market.layout.ca_cert)]


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_cli_search_fetch_generate_evaluate(world, lwm_home, tmp_path):
    data = _jsonl(tmp_path / "finance.jsonl", world["users"]["finance"])
    found = json.loads(
        lwm(world, lwm_home, "search", str(data), *_market_args(world), "--json").stdout
    )
    assert found["kind"] == "rkme" and found["epsilon"] == 4.0 and found["n_texts"] == USER_TEXTS
    assert found["results"][0]["domain"] == "finance"
    assert set(found["timing"]) == {"spec_s", "network_s", "total_s"}
    assert set(found["confidence"]) == {"probability", "margin", "method"}
    table = lwm(
        world, lwm_home, "search", str(data), *_market_args(world), "--no-dp", "--top-k", "2",
        "--budget-epsilon", "inf",  # no DP spends without bound: refused under any budget
    )
    assert "NOT differentially private" in table.stderr
    assert "finance-lora" in table.stdout and "no DP" in table.stdout
    assert "first match right with probability" in table.stdout
    top = found["results"][0]["id"]
    out = tmp_path / "lw"
    fetched = lwm(world, lwm_home, "fetch", top, "--out", str(out), *_market_args(world)).stdout
    assert "signature" in fetched and (out / "adapter_model.safetensors").is_file()
    text = lwm(world, lwm_home, "generate", str(out), "--prompt", "Shares", "--max-new-tokens", "6")
    assert text.stdout.strip()
    scored = lwm(world, lwm_home, "evaluate", str(out), str(data), "--with-base", "--json").stdout
    scores = json.loads(scored)
    assert scores["result"]["perplexity"] < scores["base"]["perplexity"]
    plain = lwm(world, lwm_home, "evaluate", str(out), str(data)).stdout
    assert "perplexity" in plain


def test_cli_generate_fetches_an_id_into_the_cache(world, lwm_home):
    learnware_id = world["ids"]["medicine"]
    args = ["generate", learnware_id, "--prompt", "Fracture of", *_market_args(world)]
    assert lwm(world, lwm_home, *args).stdout.strip()
    assert (lwm_home.root / "learnwares" / learnware_id / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["search", "MISSING.jsonl", "MARKET"], 3, "MISSING.jsonl"),
        (["search", "DATA", "MARKET", "--kind", "nope"], 5, "nope"),
        (["search", "DATA", "MARKET", "--insecure"], 2, "exclude"),
        (["fetch", "0" * 32, "--out", "OUT", "MARKET"], 7, "0" * 32),
        (["fetch", "../etc", "--out", "OUT", "MARKET"], 2, "not a learnware id"),
        (["fetch", "MATH", "--out", "OUT", "MARKET", "--revoked-keys", "REVOKED"], 11, "revoked"),
        (["evaluate", "NOFOLDER", "DATA"], 2, "not a learnware folder"),
    ],
)
def test_cli_errors_are_one_line_with_an_exit_code(world, lwm_home, tmp_path, args, code, needle):
    data = _jsonl(tmp_path / "data.jsonl", world["users"]["math"][:5])
    alice_key = signing.load_private_key(world["market"].keys_dir / "alice.key")
    alice = signing.key_id(alice_key.public_key())
    (tmp_path / "revoked.txt").write_text(f"# revoked by the admin\n{alice}  alice\n")
    names = {
        "DATA": [str(data)],
        "OUT": [str(tmp_path / "out")],
        "REVOKED": [str(tmp_path / "revoked.txt")],
        "MISSING.jsonl": [str(tmp_path / "MISSING.jsonl")],
        "MARKET": _market_args(world),
        "MATH": [world["ids"]["math"]],
    }
    argv = [x for a in args for x in names.get(a, [a])]
    proc = lwm(world, lwm_home, *argv, check=False)
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("warning")]
    assert len(lines) == 1 and lines[0].startswith("lwm: error:") and needle in lines[0], lines
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)

"""The ``lwm`` CLI as a user runs it: real processes, real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.data import load_domain


def lwm(home, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LWM_HOME": str(home.root), "HF_HUB_OFFLINE": "1"}
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


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_help_lists_the_commands(lwm_home):
    out = lwm(lwm_home, "--help").stdout
    for command in ("spec", "models", "data", "simulate", "privacy"):
        assert command in out


def test_spec_make_and_rank_with_real_text(lwm_home, tmp_path):
    finance, math = load_domain("finance"), load_domain("math")
    holder_fin = write_jsonl(tmp_path / "fin.jsonl", finance[:200])
    holder_math = write_jsonl(tmp_path / "math.jsonl", math[:200])
    user = write_jsonl(tmp_path / "user.jsonl", finance[200:300])
    schema = tmp_path / "schema.json"
    lwm(lwm_home, "spec", "schema", "--out", str(schema))
    specs = {}
    for name, data in (("fin", holder_fin), ("math", holder_math), ("user", user)):
        specs[name] = tmp_path / f"{name}.safetensors"
        made = lwm(
            lwm_home,
            "spec",
            "make",
            str(data),
            "--kind",
            "rkme",
            "--epsilon",
            "4",
            "--schema",
            str(schema),
            "--out",
            str(specs[name]),
        )
        assert "epsilon 4" in made.stdout
    ranked = lwm(
        lwm_home,
        "spec",
        "rank",
        str(specs["user"]),
        str(specs["math"]),
        str(specs["fin"]),
        "--json",
    )
    results = json.loads(ranked.stdout)["results"]
    assert results[0]["spec"] == str(specs["fin"])
    assert results[0]["distance"] < results[1]["distance"]
    table = lwm(lwm_home, "spec", "rank", str(specs["user"]), str(specs["fin"])).stdout
    assert "fin.safetensors" in table


def test_no_dp_is_warned(lwm_home, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", load_domain("software")[:20])
    proc = lwm(
        lwm_home, "spec", "make", str(data), "--no-dp", "--out", str(tmp_path / "s.safetensors")
    )
    assert "NOT differentially private" in proc.stderr


def test_models_list_and_data_inspect(lwm_home, tmp_path):
    models = lwm(lwm_home, "models", "list").stdout
    assert "tiny" in models and "smollm2-135m" in models
    data = write_jsonl(tmp_path / "d.jsonl", ["first private text", "second private text"])
    summary = json.loads(lwm(lwm_home, "data", "inspect", str(data), "--json").stdout)
    assert summary["count"] == 2
    assert "private" not in json.dumps(summary)  # inspect never prints the text itself


# ``lwm contribute`` with every required option (a bad one is appended; --license last).
CONTRIBUTE = [
    "contribute",
    "D.jsonl",
    "--name",
    "x",
    "--domain",
    "d",
    "--task",
    "t",
    "--key",
    "K",
    "--spec-epsilon",
    "4",
    "--base-model",
    "tiny",
    "--spec",
    "rkme",
    "--out",
    "OUT",
    "--license",
    "MIT",
]



def submit_as(key: str) -> list[str]:
    """``CONTRIBUTE`` submitting to a market (``MARKET``, ``CA``) with ``key`` instead of
    writing ``--out``, under DP-SGD (so no warning line precedes the error)."""
    args = [key if a == "K" else a for a in CONTRIBUTE]
    out = args.index("--out")
    market = ["--server", "MARKET", "--ca", "CA", "--dp-sgd", "--train-epsilon", "8"]
    return [*args[:out], *args[out + 2 :], *market]


BAD_INPUT = [
    pytest.param(
        ["data", "inspect", "MISSING.jsonl"], 3, "MISSING.jsonl", id="a missing data file"
    ),
    pytest.param(
        ["spec", "make", "EMPTY", "--out", "x.safetensors"], 3, "EMPTY", id="an empty data file"
    ),
    pytest.param(
        ["spec", "make", "D", "--epsilon", "0", "--out", "x.safetensors"],
        4,
        "epsilon",
        id="epsilon 0",
    ),
    pytest.param(
        ["spec", "make", "D", "--kind", "nope", "--out", "x.safetensors"],
        5,
        "nope",
        id="an unknown spec kind",
    ),
    pytest.param(["spec", "rank", "NOFILE", "NOFILE"], 4, "not found", id="missing spec files"),
    pytest.param(
        ["data", "inspect", "D.jsonl", "--text-column", "body"],
        3,
        "no column 'body' (--text-column; found: text)",
        id="a column the data does not have",
    ),
    pytest.param(
        ["data", "inspect", "D.jsonl", "--split", "test"],
        3,
        "one table without splits",
        id="--split on a file without splits",
    ),
    pytest.param(
        ["keys", "new", "alice", "--out", "D"], 2, "File exists", id="--out is a file, not a folder"
    ),
    pytest.param(["keys", "new", "../alice"], 2, "plain file stem", id="a key name with a path"),
    pytest.param(
        ["server", "start", "--dir", "NOFILE", "--idle-timeout", "0"],
        2,
        "idle_s must be > 0",
        id="--idle-timeout 0",
    ),
    pytest.param(
        ["server", "start", "--dir", "NOFILE", "--max-calls-per-address", "5000"],
        2,
        "max_concurrent_rpcs must exceed max_calls_per_address",
        id="more calls per address than in total",
    ),
    # the privacy ledger (tests/test_privacy_ledger.py spends and refuses a budget)
    pytest.param(
        ["search", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--budget-epsilon", "-1"],
        2,
        "budget epsilon",
        id="a negative budget epsilon",
    ),
    pytest.param(
        ["privacy", "budget", "0", "--data", "D.jsonl"], 2, "budget epsilon", id="a budget of 0"
    ),
    pytest.param(["privacy", "reset", "--data", "D.jsonl"], 2, "--yes", id="a reset without --yes"),
    pytest.param(
        ["privacy", "reset", "--data", "D.jsonl", "--yes"],
        7,
        "nothing was recorded",
        id="a reset with nothing recorded",
    ),
    # the catalogue (tests/test_market_cli.py runs them against a real market)
    pytest.param(
        ["market", "list", "--server", "127.0.0.1:1", "--key", "K", "--status", "gone"],
        2,
        "--status",
        id="an unknown --status",
    ),
    pytest.param(
        ["market", "withdraw", "ID", "--reason", " ", "--server", "127.0.0.1:1", "--key", "K"],
        2,
        "--reason",
        id="a blank --reason",
    ),
    pytest.param(
        ["market", "submit", "NOFILE", "--server", "127.0.0.1:1", "--key", "K"],
        2,
        "not a learnware folder",
        id="a folder that is not a learnware",
    ),
    pytest.param(
        [
            "package",
            "build",
            "--adapter",
            "NOFILE",
            "--data",
            "D.jsonl",
            "--name",
            "x",
            "--domain",
            "d",
            "--task",
            "t",
            "--license",
            "MIT",
            "--key",
            "K",
            "--base-model",
            "tiny",
        ],
        2,
        "adapter_config.json is missing",
        id="an adapter folder without its config",
    ),
    pytest.param(
        [
            "package",
            "build",
            "--adapter",
            "D",
            "--data",
            "D.jsonl",
            "--name",
            "Bad Name",
            "--domain",
            "d",
            "--task",
            "t",
            "--license",
            "MIT",
            "--key",
            "K",
            "--base-model",
            "tiny",
        ],
        2,
        "name",
        id="a name with spaces",
    ),
    # numbers: counts are 1 or more, refused while parsing (issue 15)
    pytest.param(
        ["search", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--top-k", "0"],
        2,
        "--top-k must be at least 1",
        id="--top-k 0",
    ),
    pytest.param(
        ["search", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--top-k", "-3"],
        2,
        "--top-k must be at least 1",
        id="--top-k -3",
    ),
    pytest.param(
        ["reuse", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--top-k", "0"],
        2,
        "--top-k must be at least 1",
        id="reuse --top-k 0",
    ),
    pytest.param(
        ["reuse", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--holdout", "0"],
        2,
        "--holdout must be at least 1",
        id="reuse --holdout 0",
    ),
    pytest.param(
        ["reuse", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--holdout", "5"],
        2,
        "--holdout must be between 1 and the data's 1 records, got 5",
        id="a held-out slice larger than the data",
    ),
    pytest.param(
        ["reuse", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--out", "D"],
        8,
        "--out must name a new folder",
        id="reuse --out is an existing file",
    ),
    pytest.param(
        ["generate", "D", "--prompt", "hi", "--max-new-tokens", "0"],
        2,
        "--max-new-tokens",
        id="--max-new-tokens 0",
    ),
    pytest.param(
        ["evaluate", "D", "D.jsonl", "--batch-size", "0"], 2, "--batch-size", id="--batch-size 0"
    ),
    # sampling options, checked before any model loads (tests/test_generate.py samples)
    pytest.param(
        ["generate", "D", "--prompt", "hi", "--temperature", "-1"],
        2,
        "--temperature must be >= 0",
        id="a negative --temperature",
    ),
    pytest.param(
        ["generate", "D", "--prompt", "hi", "--top-p", "0"],
        2,
        "--top-p must be in (0, 1]",
        id="--top-p 0",
    ),
    pytest.param(
        ["generate", "D", "--prompt", "hi", "--top-k", "0"],
        2,
        "--top-k must be >= 1",
        id="generate --top-k 0",
    ),
    pytest.param(
        ["generate", "D", "--prompt", "hi", "--seed", "-1"], 2, "--seed", id="a negative --seed"
    ),
    # lm-evaluation-harness tasks, loaded before the learnware (tests/test_harness.py runs them)
    pytest.param(["evaluate", "D"], 2, "give DATA", id="neither DATA nor --tasks"),
    pytest.param(
        ["evaluate", "D", "--tasks", " , "], 2, "--tasks needs at least one", id="an empty --tasks"
    ),
    pytest.param(
        ["evaluate", "D", "--tasks", "NOFILE.yaml"],
        3,
        "NOFILE.yaml: no such task file",
        id="a missing task YAML",
    ),
    pytest.param(
        ["evaluate", "D", "--tasks", "hellaswag_typo"],
        2,
        "unknown task 'hellaswag_typo'",
        id="an unknown lm-eval task",
    ),
    pytest.param(
        ["evaluate", "D", "--tasks", "hellaswag"],
        3,
        "task 'hellaswag' cannot load its data",
        id="a built-in task offline",
    ),
    pytest.param([*CONTRIBUTE, "--steps", "0"], 2, "--steps must be at least 1", id="--steps 0"),
    pytest.param(
        [*CONTRIBUTE, "--batch-size", "-1"],
        2,
        "--batch-size must be at least 1",
        id="--batch-size -1",
    ),
    pytest.param([*CONTRIBUTE, "--lora-r", "0"], 2, "--lora-r must be at least 1", id="--lora-r 0"),
    # licences: an SPDX id on the list the spdx package ships (or LicenseRef-...)
    pytest.param(
        [*CONTRIBUTE[:-1], "Made-Up-1.0"],
        2,
        "'Made-Up-1.0' is not an SPDX license id",
        id="an invented licence id",
    ),
    pytest.param(
        [
            "package",
            "build",
            "--adapter",
            "D",
            "--data",
            "D.jsonl",
            "--name",
            "x",
            "--domain",
            "d",
            "--task",
            "t",
            "--license",
            "MIT AND Nope",
            "--key",
            "K",
            "--base-model",
            "tiny",
        ],
        2,
        "'Nope' is not an SPDX license id",
        id="an invented id in an expression",
    ),
    # files a command writes: checked before any work, never silently overwritten
    pytest.param(
        ["spec", "make", "D", "--out", "D"],
        8,
        "exists; refusing to overwrite it (pass --force)",
        id="--out is an existing file",
    ),
    pytest.param(
        ["spec", "make", "D", "--out", "NODIR/x.safetensors"],
        2,
        "NODIR does not exist",
        id="--out in a missing folder",
    ),
    pytest.param(
        ["spec", "make", "D", "--out", "D/x.safetensors"],
        2,
        "is not a folder",
        id="--out under a file",
    ),
    pytest.param(
        ["spec", "schema", "--out", "D"], 8, "pass --force", id="--out is an existing file"
    ),
    pytest.param(
        ["fetch", "abc123", "--out", "D/x", "--server", "127.0.0.1:1", "--key", "K"],
        2,
        "is not a folder",
        id="--out under a file",
    ),
    pytest.param(
        ["keys", "new", "alice", "--out", "D/keys"], 2, "Not a directory", id="--out under a file"
    ),
    # devices (issue 15 item 4): refused before any model loads
    pytest.param(
        ["spec", "make", "D", "--out", "x.safetensors", "--device", "tpu"],
        2,
        "--device 'tpu': use one of auto, cpu, cuda, mps",
        id="an unknown --device",
    ),
    pytest.param(
        ["evaluate", "D", "D.jsonl", "--dtype", "float64"],
        2,
        "--dtype 'float64': use one of float32, bfloat16, float16",
        id="an unknown --dtype",
    ),
    pytest.param(
        ["generate", "D", "--prompt", "hi", "--device", "cuda:99"],
        6,
        "--device cuda:99: torch sees no such CUDA device here",
        id="a GPU this machine lacks",
    ),
    pytest.param(
        [*CONTRIBUTE, "--device", "cuda:99", "--dtype", "bfloat16"],
        6,
        "no such CUDA device",
        id="training on a GPU this machine lacks",
    ),
    pytest.param(["server", "init", "--dir", "D"], 2, "File exists", id="--dir is a file"),
    pytest.param(
        ["server", "init", "--dir", "D/srv"], 2, "Not a directory", id="--dir under a file"
    ),
    # a key the market does not let submit, asked (WhoAmI) before any model loads; MARKET,
    # CA and the keys are a real market's on loopback (the ``refusing_market`` fixture)
    pytest.param(
        submit_as("USER.key"),
        10,
        "has the user role, and submitting a learnware needs the contributor role",
        id="a key without the contributor role",
    ),
    pytest.param(
        submit_as("REVOKED.key"),
        9,
        "unknown or revoked key id",
        id="a revoked contributor key",
    ),
    # a consortium's own files in lwm simulate: read when SIM.toml is, before any work
    pytest.param(
        ["simulate", "--config", "SIM-nofile.toml", "--out", "OUT"],
        3,
        "nowhere.jsonl: no such file or folder",
        id="a missing file in SIM.toml",
    ),
    pytest.param(
        ["simulate", "--config", "SIM-column.toml", "--out", "OUT"],
        3,
        "no column 'body'",
        id="a column the SIM.toml file lacks",
    ),
    pytest.param(
        ["simulate", "--config", "SIM-key.toml", "--out", "OUT"],
        2,
        "unknown keys ['colour']",
        id="an unknown key in a SIM.toml file table",
    ),
    pytest.param(
        ["simulate", "--config", "SIM-answer.toml", "--out", "OUT"],
        3,
        "neither one of the 2 choices nor an index",
        id="an answer outside a question's choices",
    ),
]
MARKET_WORDS = ("MARKET", "CA", "USER.key", "REVOKED.key")


@pytest.fixture(scope="module")
def refusing_market(tmp_path_factory, lwm_home) -> Iterator[dict[str, str]]:
    """A real market on loopback with a user-role key and a revoked contributor key: what
    ``BAD_INPUT``'s ``MARKET_WORDS`` stand for."""
    from market_fixtures import market_server

    from server.records import Role
    from shared import signing

    tmp = tmp_path_factory.mktemp("refusing-market")
    with market_server(tmp, lwm_home, run_smoke=False) as market:
        market.new_key("user", Role.USER)
        revoked = market.new_key("revoked", Role.CONTRIBUTOR)
        market.client("admin").revoke_key(signing.key_id(revoked.public_key()), "left")
        yield {
            "MARKET": market.address,
            "CA": str(market.layout.ca_cert),
            "USER.key": str(market.keys_dir / "user.key"),
            "REVOKED.key": str(market.keys_dir / "revoked.key"),
        }


_SIM_B = '[[contributors]]\nname = "b"\nsources = ["math"]\n'
SIM_CONFIGS = (  # the SIM-*.toml files of the cases above; paths relative to the file
    ("SIM-nofile.toml", 'sources = [{ path = "nowhere.jsonl" }]'),
    ("SIM-column.toml", 'sources = [{ path = "D.jsonl", text_column = "body" }]'),
    ("SIM-key.toml", 'sources = [{ path = "D.jsonl", colour = "red" }]'),
    (
        "SIM-answer.toml",
        'sources = [{ path = "D.jsonl" }]\n' + _SIM_B + '[[tasks]]\nname = "quiz"\n'
        'right = ["a"]\ndata = { path = "QUIZ.jsonl" }',
    ),
)


def _write_sim_configs(folder: Path) -> None:
    (folder / "QUIZ.jsonl").write_text('{"question": "q?", "choices": ["x", "y"], "answer": 5}\n')
    for name, sources in SIM_CONFIGS:
        text = f'[[contributors]]\nname = "a"\n{sources}\n'
        (folder / name).write_text(text if "[[tasks]]" in text else text + _SIM_B)


@pytest.mark.parametrize(("args", "code", "needle"), BAD_INPUT)
def test_bad_input_is_one_line_and_an_exit_code(lwm_home, tmp_path, request, args, code, needle):
    (tmp_path / "EMPTY").write_text("")
    write_jsonl(tmp_path / "D", ["a perfectly fine text to make a spec from"])
    write_jsonl(tmp_path / "D.jsonl", ["a perfectly fine text to make a spec from"])
    _write_sim_configs(tmp_path)
    args = [str(tmp_path / a) if a in ("EMPTY", "D", "D.jsonl", "NOFILE") else a for a in args]
    if set(MARKET_WORDS) & set(args):
        market = request.getfixturevalue("refusing_market")
        args = [market.get(a, a) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "LWM_HOME": str(lwm_home.root), "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lwm: error:") and needle in lines[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_a_user_key_is_refused_before_any_model_loads(refusing_market, tmp_path):
    """``lwm contribute`` asks the market for its key's role first: a user key ends in
    seconds with nothing trained, and no model was even loaded into the (fresh) home."""
    from shared.home import Home

    fresh = Home(tmp_path / "fresh-home")  # loading any model would build or copy it here
    data = write_jsonl(tmp_path / "d.jsonl", load_domain("finance")[:20])
    args = [refusing_market.get(a, a) for a in submit_as("USER.key")]
    args[1] = str(data)

    proc = lwm(fresh, *args, check=False)

    assert proc.returncode == 10, proc.stderr
    assert proc.stderr.strip().startswith("lwm: error: key ") and "user role" in proc.stderr
    assert [p for p in fresh.root.rglob("*") if p.is_file()] == []


README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_START = "<!-- bad-input table: generated from tests/test_cli.py BAD_INPUT -->"
TABLE_END = "<!-- end of bad-input table -->"


def bad_input_table() -> str:
    """README's "Bad input" table, one row per ``BAD_INPUT`` case (so it cannot drift):
    ``python tests/test_cli.py`` prints it."""
    lines = ["| input | command | exit code | message contains |", "|---|---|---|---|"]
    for case in BAD_INPUT:
        args, code, needle = case.values
        if args[: len(CONTRIBUTE) - 1] == CONTRIBUTE[:-1]:  # the long valid part, elided
            args = ["contribute", "D.jsonl", "…", "--license", *args[len(CONTRIBUTE) - 1 :]]
        command = " ".join(a if a.strip() and " " not in a else repr(a) for a in args)
        lines.append(f"| {case.id} | `lwm {command}` | {code} | `{needle}` |")
    return "\n".join(lines)


def test_readme_bad_input_table_is_the_tests():
    text = README.read_text()
    shown = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert shown == bad_input_table(), "regenerate it: python tests/test_cli.py"


if __name__ == "__main__":
    print(bad_input_table())

"""The ``lwm`` CLI as a user runs it: real processes, real files, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
CONTRIBUTE = ["contribute", "D.jsonl", "--name", "x", "--domain", "d", "--task", "t",
              "--key", "K", "--spec-epsilon", "4", "--base-model", "tiny", "--spec", "rkme",
              "--out", "OUT", "--license", "MIT"]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["data", "inspect", "MISSING.jsonl"], 3, "MISSING.jsonl"),
        (["spec", "make", "EMPTY", "--out", "x.safetensors"], 3, "EMPTY"),
        (["spec", "make", "D", "--epsilon", "0", "--out", "x.safetensors"], 4, "epsilon"),
        (["spec", "make", "D", "--kind", "nope", "--out", "x.safetensors"], 5, "nope"),
        (["spec", "rank", "NOFILE", "NOFILE"], 4, "not found"),
        (["keys", "new", "alice", "--out", "D"], 2, "File exists"),  # --out is a file
        (["keys", "new", "../alice"], 2, "plain file stem"),
        (["server", "start", "--dir", "NOFILE", "--idle-timeout", "0"], 2, "idle_s must be > 0"),
        (["server", "start", "--dir", "NOFILE", "--max-calls-per-address", "5000"],
         2, "max_concurrent_rpcs must exceed max_calls_per_address"),
        # the privacy ledger (tests/test_privacy_ledger.py spends and refuses a budget)
        (["search", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--budget-epsilon", "-1"],
         2, "budget epsilon"),
        (["privacy", "budget", "0", "--data", "D.jsonl"], 2, "budget epsilon"),
        (["privacy", "reset", "--data", "D.jsonl"], 2, "--yes"),
        (["privacy", "reset", "--data", "D.jsonl", "--yes"], 7, "nothing was recorded"),
        # the catalogue (tests/test_market_cli.py runs them against a real market)
        (["market", "list", "--server", "127.0.0.1:1", "--key", "K", "--status", "gone"],
         2, "--status"),
        (["market", "withdraw", "ID", "--reason", " ", "--server", "127.0.0.1:1", "--key", "K"],
         2, "--reason"),
        (["market", "submit", "NOFILE", "--server", "127.0.0.1:1", "--key", "K"],
         2, "not a learnware folder"),
        (["package", "build", "--adapter", "NOFILE", "--data", "D.jsonl", "--name", "x",
          "--domain", "d", "--task", "t", "--license", "MIT", "--key", "K", "--base-model", "tiny"],
         2, "adapter_config.json is missing"),
        (["package", "build", "--adapter", "D", "--data", "D.jsonl", "--name", "Bad Name",
          "--domain", "d", "--task", "t", "--license", "MIT", "--key", "K", "--base-model", "tiny"],
         2, "name"),
        # numbers: counts are 1 or more, refused while parsing (issue 15)
        (["search", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--top-k", "0"],
         2, "--top-k must be at least 1"),
        (["search", "D.jsonl", "--server", "127.0.0.1:1", "--key", "K", "--top-k", "-3"],
         2, "--top-k must be at least 1"),
        (["generate", "D", "--prompt", "hi", "--max-new-tokens", "0"], 2, "--max-new-tokens"),
        (["evaluate", "D", "D.jsonl", "--batch-size", "0"], 2, "--batch-size"),
        ([*CONTRIBUTE, "--steps", "0"], 2, "--steps must be at least 1"),
        ([*CONTRIBUTE, "--batch-size", "-1"], 2, "--batch-size must be at least 1"),
        ([*CONTRIBUTE, "--lora-r", "0"], 2, "--lora-r must be at least 1"),
        # licences: an SPDX id on the list the spdx package ships (or LicenseRef-...)
        ([*CONTRIBUTE[:-1], "Made-Up-1.0"], 2, "'Made-Up-1.0' is not an SPDX license id"),
        (["package", "build", "--adapter", "D", "--data", "D.jsonl", "--name", "x",
          "--domain", "d", "--task", "t", "--license", "MIT AND Nope", "--key", "K",
          "--base-model", "tiny"], 2, "'Nope' is not an SPDX license id"),
        # files a command writes: checked before any work, never silently overwritten
        (["spec", "make", "D", "--out", "D"], 8, "exists; refusing to overwrite it (pass --force)"),
        (["spec", "make", "D", "--out", "NODIR/x.safetensors"], 2, "NODIR does not exist"),
        (["spec", "make", "D", "--out", "D/x.safetensors"], 2, "is not a folder"),
        (["spec", "schema", "--out", "D"], 8, "pass --force"),
        (["fetch", "abc123", "--out", "D/x", "--server", "127.0.0.1:1", "--key", "K"],
         2, "is not a folder"),
        (["keys", "new", "alice", "--out", "D/keys"], 2, "Not a directory"),
        (["server", "init", "--dir", "D"], 2, "File exists"),
        (["server", "init", "--dir", "D/srv"], 2, "Not a directory"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(lwm_home, tmp_path, args, code, needle):
    (tmp_path / "EMPTY").write_text("")
    write_jsonl(tmp_path / "D", ["a perfectly fine text to make a spec from"])
    write_jsonl(tmp_path / "D.jsonl", ["a perfectly fine text to make a spec from"])
    args = [str(tmp_path / a) if a in ("EMPTY", "D", "D.jsonl", "NOFILE") else a for a in args]
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

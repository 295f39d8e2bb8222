"""``lwm simulate --profile quick`` end to end, as a user runs it: a real market server
process, real corpora, the tiny model, a Flower federation, DP specs, search, fetch and the
full evaluation. The first run is interrupted with SIGINT (Ctrl-C) after its first learnware;
the second resumes from the cache and must finish with a report whose figures are the run's.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.simulate.config import SimulationConfig

QUICK_TIMEOUT_S = 900


def _as_in_a_terminal() -> None:
    """Ctrl-C's default disposition: a CI job started in the background inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(out: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LWM_HOME": str(home), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "client.cli", "simulate", "--profile", "quick", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_as_in_a_terminal,
    )


def _interrupt_after_first_learnware(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + QUICK_TIMEOUT_S
    for line in proc.stdout:
        seen.append(line)
        if "built in" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return "".join(seen) + stdout, stderr


def _market_port(out: Path) -> int:
    ready = [
        json.loads(line)
        for line in (out / "market" / "server.log").read_text().splitlines()
        if line.startswith("{") and '"ready"' in line
    ]
    return int(ready[-1]["port"])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lwm_home):
    out = tmp_path_factory.mktemp("simulate") / "run"
    first = _run(out, lwm_home.root)
    first_out, first_err = _interrupt_after_first_learnware(first)
    interrupted = {
        "rc": first.returncode,
        "stdout": first_out,
        "stderr": first_err,
        "port": _market_port(out),
        "packages": sorted((out / "cache" / "learnwares").iterdir()),
    }
    second = _run(out, lwm_home.root)
    stdout, stderr = second.communicate(timeout=QUICK_TIMEOUT_S)
    assert second.returncode == 0, stderr[-3000:]
    return out, interrupted, stdout


def test_ctrl_c_stops_the_market_and_leaves_only_whole_packages(runs):
    _, interrupted, _ = runs
    assert interrupted["rc"] == 130, interrupted["stderr"][-2000:]
    assert "interrupted" in interrupted["stderr"]
    assert not _listening(interrupted["port"]), "the market server outlived Ctrl-C"
    assert interrupted["packages"], "the first learnware was built before the interrupt"
    for package in interrupted["packages"]:
        names = {p.name for p in package.iterdir()}
        assert {"manifest.json", "signature"} <= names, f"half-written package {package}"


def test_the_rerun_resumes_from_the_cache(runs):
    out, interrupted, _ = runs
    results = json.loads((out / "results.json").read_text())
    cached = {x["contributor"] for x in results["learnwares"] if x["cached"]}
    first = {p.name.rsplit("-", 1)[0] for p in interrupted["packages"]}
    assert first and first <= cached
    assert len(cached) < len(results["learnwares"]), "the rest was built in the second run"


def test_report_has_the_papers_table_for_both_kinds_and_the_plots(runs):
    out, _, stdout = runs
    report = (out / "report.md").read_text()
    config = SimulationConfig.profile_named("quick")
    for heading in (
        "## Summary",
        "## Perplexity per domain",
        "## Per user",
        "## Identification against the user's epsilon",
        "## Privacy spent",
        "## Time per phase",
    ):
        assert heading in report
    header = next(line for line in report.splitlines() if line.startswith("| domain |"))
    for column in ("Base", "Random", "Best-single", "Oracle"):
        assert f"| {column} |" in header
    for kind in config.spec_kinds:
        assert f"Learnware ({kind})" in header and f"gap closed ({kind})" in header
        assert f"Checked ({kind})" in header and f"Merged top-k ({kind})" in header
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        data = (out / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, image
    assert "done in" in stdout


def test_results_are_this_runs_measurements(runs, lwm_home):
    """Recompute figures from the run's own artefacts: nothing may be a constant."""
    out, _, _ = runs
    results = json.loads((out / "results.json").read_text())
    config = SimulationConfig.profile_named("quick")
    assert [x["contributor"] for x in results["learnwares"]] == [
        c.name for c in config.contributors
    ]
    assert all(x["status"] == "USABLE" for x in results["learnwares"])
    federated = next(x for x in results["learnwares"] if x["holders"] > 1)
    assert {p["what"] for p in federated["dp"]["parts"]} == {"adapter", "spec:rkme", "spec:pave"}
    _one_score_recomputes(out, results, config, lwm_home)
    _table_follows_from_scores(out, results)
    _identification_follows_from_searches(results)


def _one_score_recomputes(out, results, config, home):  # type: ignore[no-untyped-def]
    from client.evaluate import evaluate
    from client.run import load_learnware
    from client.simulate.data import deal

    user = deal(config).users[0]
    learnware = results["learnwares"][0]
    recorded = next(
        s
        for s in results["scores"]
        if s["user"] == user.name and s["model"] == learnware["contributor"]
    )
    loaded = load_learnware(out / "cache" / "fetched" / learnware["id"], home=home)
    again = evaluate(
        loaded,
        user.eval_records(),
        max_labels=config.users.max_labels,
        max_words=config.users.eval_words,
    ).learnware
    assert again.perplexity == pytest.approx(recorded["perplexity"], rel=1e-3)


def _table_follows_from_scores(out, results):  # type: ignore[no-untyped-def]
    base = [math.log(s["perplexity"]) for s in results["scores"] if s["model"] == "base"]
    overall = next(row for row in results["table"] if row["group"] == "all")
    assert overall["base"] == pytest.approx(math.exp(sum(base) / len(base)))
    line = next(x for x in (out / "report.md").read_text().splitlines() if x.startswith("| all |"))
    assert f"| {overall['base']:.2f} |" in line
    for row in results["contenders"]:
        assert row["oracle"] <= row["random"] + 1e-9
        assert row["oracle"] <= min(row["learnware"].values()) + 1e-9


def _identification_follows_from_searches(results):  # type: ignore[no-untyped-def]
    users = {u["name"]: u for u in results["users"]}
    for kind, summary in results["identification"].items():
        queries = [q for q in results["searches"] if q["kind"] == kind]
        right = sum(q["pick"] in users[q["user"]]["right"] for q in queries)
        assert summary["correct"] == right and summary["users"] == len(users)
        for q in queries:
            assert q["pick"] == max(q["scores"], key=q["scores"].get)

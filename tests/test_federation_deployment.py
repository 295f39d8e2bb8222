"""Flower's deployment engine on loopback: a real SuperLink, two real SuperNodes (holders 0
and 1 by ``partition-id``) and ``flwr run client/federation/app`` build one signed learnware
(tiny model, one round), written to ``market.out`` and verified with the coordinator key.
Holder 1's SuperNode reads its own copy of FED.toml (``--node-config config=...``) in a
folder that lacks holder 0's data, as on a machine of its own.

Everything runs as subprocesses of this test, on free loopback ports, with ``FLWR_HOME`` in
a temporary folder (nothing touches ~/.flwr); every process group, and every process they
started (Flower detaches the SuperLink's SuperExec into its own session), is killed at
the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from shared import signing
from shared.data import load_domain
from shared.home import Home
from shared.learnware import verify_package
from shared.models import load_causal_lm

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "client" / "federation" / "app"
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr, flower-superexec
CONNECTION = "loopback"
RUN_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until something listens on ``port``; fail with the log if ``process`` dies first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listened on {port} within 60 s:\n{log.read_text()[-3000:]}")


def flower_env(flwr_home: Path, lwm_home: Path) -> dict[str, str]:
    """The environment of every Flower process: this venv first on PATH (the SuperLink
    starts ``flower-superexec`` by name), a private FLWR_HOME, no update check or telemetry."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "LWM_HOME": str(lwm_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
    }


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM then SIGKILL each process group and every descendant, by id."""
    victims: list[psutil.Process] = []
    for p in processes:
        with suppress(psutil.NoSuchProcess):
            victims += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for p in processes:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)  # started with start_new_session: pgid == pid
    for v in victims:
        with suppress(psutil.NoSuchProcess):
            v.terminate()
    _, alive = psutil.wait_procs(victims, timeout=10)
    for v in alive:
        with suppress(psutil.NoSuchProcess):
            v.kill()
    for p in processes:
        with suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


@contextmanager
def flower_deployment(folder: Path, env: dict[str, str], node_configs: list[str]) -> Iterator[int]:
    """A SuperLink and one SuperNode per ``--node-config``, insecure on loopback; yields the
    SuperLink's port (its Fleet, Control and Runtime APIs share it)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        with (folder / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one in stop()
            )
        processes.append(process)
        return process

    link_port = free_port()
    try:
        link = start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--port",
            str(link_port),
            "--disable-runtime-dependency-installation",  # nothing to install, no network
        )
        wait_for_port(link_port, link, folder / "superlink.log")
        for k, node_config in enumerate(node_configs):
            start(
                f"supernode{k}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--port",
                str(free_port()),  # each SuperNode's own Runtime API
                "--node-config",
                node_config,
            )
        yield link_port
    finally:
        stop(processes)


def flwr(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"flwr {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def write_federation(folder: Path, home: Path) -> tuple[Path, Path, Path, Path]:
    """Two holders' texts (24 each), the coordinator key and FED.toml, and holder 1's
    machine: a folder with its copy of FED.toml and only its own texts, 20 of them (so the
    merged spec's n tells which copy holder 1 read).

    Returns (FED.toml, holder 1's FED.toml, key, out).
    """
    texts = load_domain("finance")[:48]
    for i, part in enumerate((texts[:24], texts[24:])):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in part)
        (folder / f"holder{i}.jsonl").write_text(lines)
    key = folder / "coordinator.key"
    signing.save_private_key(key, signing.generate_keypair()[0])
    out = folder / "out" / "region-news"
    fed = folder / "FED.toml"
    fed.write_text(
        f'base_model = "tiny"\nrounds = 1\nlocal_steps = 2\nmax_tokens = 48\nhome = "{home}"\n'
        "min_holders = 2\n"
        '[learnware]\nname = "region-news"\ndomain = "finance"\ntask = "text-generation"\n'
        'description = "Federated on Flower\'s deployment engine."\nlicense = "MIT"\n'
        "[spec]\nepsilon = 1000.0\n"  # a count noise std of 0.15: n tells 20 from 24
        f'[market]\nkey = "{key}"\nout = "{out}"\n'
        '[[holders]]\nname = "bank-a"\ndata = "holder0.jsonl"\n'
        '[[holders]]\nname = "bank-b"\ndata = "holder1.jsonl"\n'
    )
    machine1 = folder / "holder1-machine"
    machine1.mkdir()
    own = (folder / "holder1.jsonl").read_text().splitlines(keepends=True)[:20]
    (machine1 / "holder1.jsonl").write_text("".join(own))
    (machine1 / "FED.toml").write_text(fed.read_text())  # holder0.jsonl is not there
    return fed, machine1 / "FED.toml", key, out


def wait_for_run(env: dict[str, str], run_id: str) -> dict[str, object]:
    """Poll ``flwr ls`` until the run is finished (or RUN_TIMEOUT_S passes)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        listed = json.loads(flwr(env, "ls", CONNECTION, "--run-id", run_id, "--format", "json"))
        run: dict[str, object] = listed["runs"][0]
        if str(run["status"]).startswith("finished") or time.monotonic() > deadline:
            return run
        time.sleep(5)  # each `flwr ls` costs a CPU-second the run needs


def test_deployment_engine_on_loopback_writes_a_signed_package(lwm_home: Home, tmp_path: Path):
    load_causal_lm("tiny", lwm_home)  # built once here, not raced by three app processes
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    env = flower_env(flwr_home, lwm_home.root)
    fed, fed1, key, out = write_federation(tmp_path, lwm_home.root)
    nodes = ["partition-id=0", f"partition-id=1 config='{fed1}'"]
    started = time.perf_counter()

    with flower_deployment(tmp_path, env, nodes) as port:
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        submitted = flwr(
            env, "run", str(APP_DIR), CONNECTION, "--run-config", f"config='{fed}'",
            "--format", "json",
        )  # fmt: skip
        run_id = str(json.loads(submitted)["run-id"])
        run = wait_for_run(env, run_id)
        log = flwr(env, "log", run_id, CONNECTION, "--show")

    seconds = time.perf_counter() - started
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("*.log")))
    assert run["status"] == "finished:completed", f"{run}\n{log}\n{logs}"
    assert f"lwm: wrote the signed package {out}" in log, log
    assert "2 holders' specs merged, 2 trained" in log, log
    verified = verify_package(out, signing.load_private_key(key).public_key())
    assert verified.manifest.name == "region-news"
    n = verified.manifest.specs[0].n  # the DP count: holder 1 read its node-config copy
    assert abs(n - (24 + 20)) <= 1, n
    assert not (APP_DIR / ".flwr").exists() and not (APP_DIR / "pyproject.toml.bak").exists()
    print(f"deployment engine federation on loopback: {seconds:.1f} s")

"""Run a federation on one machine: ``flwr run`` on a local simulation SuperLink (Ray).

Flower 1.42 deprecates ``flwr.simulation.run_simulation`` in favour of ``flwr run``, so
``run_federation`` runs the deployment's Flower app (``app/``, whose components are
``client.federation.deploy``'s) the way Flower runs any app, in a run folder of its own (a
temporary directory, removed at the end):

1. the config as ``FED.toml`` (``FederationConfig.to_dict``; holders' in-memory texts
   written as JSONL beside it): the apps read it as a deployment's apps do;
2. ``flower-superlink --simulation`` on a free loopback port with ``FLWR_HOME`` in the run
   folder (never the user's ``~/.flwr``), named in that home's ``config.toml``;
3. ``flwr run app/ lwm --stream``: one simulated SuperNode per holder, 1 CPU each (Ray on
   2 cores), Flower's log streamed to this terminal;
4. the ServerApp's outcome file (``client.federation.result``): the result, or its error;
5. every process of the run stopped. Flower detaches the SuperLink's SuperExec and the
   simulation into sessions of their own, so they are found by the run's ``FLWR_HOME`` in
   their environment, which each of them, and each Ray process, inherits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from client.federation.config import FederationConfig, Holder
from client.federation.result import FederationResult, read_outcome
from client.federation.server_app import check_coordinator_key
from shared.errors import LwmError

APP_DIR = Path(__file__).resolve().parent / "app"  # the Flower app (FAB) folder
CONNECTION = "lwm"  # the SuperLink connection's name in the run's FLWR_HOME
START_TIMEOUT_S = 120.0  # the SuperLink's start-up on a busy 2-core machine
STOP_TIMEOUT_S = 10.0
#: The ServerApp records every outcome it reaches, its errors included, so a run without one
#: means Flower's runtime itself died, most often Ray's raylet missing its hard-coded 30 s
#: start-up on two busy cores (seen in CI). Such a run is started once more. All holders
#: are on this machine, so nothing left it in the run that died.
RUN_ATTEMPTS = 2


def run_federation(config: FederationConfig, *, verbose: bool = False) -> FederationResult:
    """Simulate ``len(config.holders)`` SuperNodes and the ServerApp; returns its result.

    The result holds the published package (at ``market.out``, or submitted with the
    market's verdict), how many holders' specs were merged and how many holders' updates
    were averaged. A coordinator key the market does not let submit is refused before
    Flower starts (``check_coordinator_key``). Raises what the ServerApp raised (the same
    ``LwmError`` class), e.g. when fewer than ``min_holders`` holders trained a round or
    returned a spec; any other failure is an ``LwmError`` naming it. No process of the run
    outlives this call.
    """
    check_coordinator_key(config)  # seconds, before Flower starts and any holder trains
    with tempfile.TemporaryDirectory(prefix="lwm-federate-") as tmp:
        folder = Path(tmp)
        fed_toml = write_config(config, folder)
        outcome = folder / "result.json"
        run_config = folder / "run-config.toml"
        _write_toml(run_config, {"config": str(fed_toml), "result": str(outcome)})
        env = flower_env(folder / "flwr-home")
        for attempt in range(1, RUN_ATTEMPTS + 1):
            with local_superlink(folder, env):
                done = subprocess.run(
                    [
                        "flwr", "run", str(APP_DIR), CONNECTION, "--stream",
                        "--run-config", str(run_config),
                        "--federation-config", federation_config(len(config.holders), verbose),
                    ],
                    env=env,
                    cwd=folder,
                    check=False,
                )  # fmt: skip
            if outcome.exists() or attempt == RUN_ATTEMPTS:
                break
            print(f"lwm: Flower's runtime ended without an outcome; starting again ({attempt + 1}/"
                  f"{RUN_ATTEMPTS})", file=sys.stderr)  # fmt: skip
        if done.returncode != 0 and not outcome.exists():
            raise LwmError(f"flwr run failed (exit code {done.returncode}; see its output above)")
        return read_outcome(outcome)


def write_config(config: FederationConfig, folder: Path) -> Path:
    """``folder/FED.toml`` of ``config``: holders' in-memory texts go to JSONL files beside
    it (raw text stays on this machine, in the run folder), the LWM home is named."""
    from client.federation.client_app import home_of

    holders = []
    for index, holder in enumerate(config.holders):
        data = holder.data
        if isinstance(data, tuple):
            path = folder / f"holder-{index}.jsonl"
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in data))
            data = path
        holders.append(Holder(holder.name, data))
    named = replace(config, holders=tuple(holders), home=home_of(config).root)
    path = folder / "FED.toml"
    _write_toml(path, named.to_dict())
    return path


def _write_toml(path: Path, table: dict[str, object]) -> None:
    import tomli_w  # Flower's own TOML writer (a dependency of flwr)

    path.write_text(tomli_w.dumps(table))


def federation_config(holders: int, verbose: bool) -> str:
    """``flwr run --federation-config``: one simulated SuperNode per holder, 1 CPU and no
    GPU each (Flower's default of 2 CPUs would run one holder at a time on 2 cores)."""
    return (
        f"num-supernodes={holders} client-resources-num-cpus=1 "
        f"client-resources-num-gpus=0.0 verbose={str(verbose).lower()}"
    )


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process of the run: this interpreter's ``bin/``
    first on PATH (the SuperLink starts ``flower-superexec`` by name), the run's own
    FLWR_HOME, no update check or telemetry, and Ray's FutureWarning about GPU variables
    settled (no GPU is asked for)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }


@contextlib.contextmanager
def local_superlink(folder: Path, env: dict[str, str]) -> Iterator[int]:
    """A SuperLink in simulation mode on a free loopback port, named ``CONNECTION`` in
    ``env``'s FLWR_HOME; yields its port. On exit every process of the run is stopped."""
    port = _free_port()
    log = folder / "superlink.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                "flower-superlink", "--insecure", "--simulation", "--host", "127.0.0.1",
                "--port", str(port), "--disable-runtime-dependency-installation",
            ],
            env=env,
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        (Path(env["FLWR_HOME"]) / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        _wait_until_up(port, process, log)
        yield port
    finally:
        stop_run_processes(Path(env["FLWR_HOME"]), process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the SuperLink answers its health check; an ``LwmError`` with the last line of
    its log if it exits or takes longer than ``START_TIMEOUT_S``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LwmError(f"Flower's SuperLink exited ({process.returncode}): {_last_line(log)}")
        url = f"http://127.0.0.1:{port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise LwmError(f"Flower's SuperLink did not start within {START_TIMEOUT_S:.0f} s")


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def run_processes(flwr_home: Path) -> list[Any]:
    """The live processes whose environment names ``flwr_home`` as FLWR_HOME: the run's
    SuperLink, SuperExec, simulation and Ray processes, wherever Flower detached them."""
    import psutil

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("FLWR_HOME") == str(
                flwr_home
            ):
                found.append(p)
    return found


def stop_run_processes(flwr_home: Path, superlink: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``, every process of the run, by id."""
    import psutil

    victims = run_processes(flwr_home)
    with contextlib.suppress(psutil.Error):
        victims += psutil.Process(superlink.pid).children(recursive=True)
    for v in victims:
        with contextlib.suppress(psutil.Error):
            v.terminate()
    _, alive = psutil.wait_procs(victims, timeout=STOP_TIMEOUT_S)
    for v in alive:
        with contextlib.suppress(psutil.Error):
            v.kill()
    superlink.wait(timeout=STOP_TIMEOUT_S)

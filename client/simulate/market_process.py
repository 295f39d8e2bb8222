"""The simulated market is the real server, met only through its public face: ``lwm server
init`` and ``lwm server start`` as child processes (TLS on loopback, SQLite in the run
folder), keys registered with ``lwm admin register-key`` under its admin key, then gRPC.
Nothing here imports ``server``.

The folder (CA, admin key, database, blobs) persists between runs, so a second run finds the
learnwares of the first. Logs go to ``server.log`` in the folder rather than a pipe: a pipe
nobody reads would block the server once it fills.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.market import Connection
from shared import signing
from shared.errors import AlreadyExists, LwmError

# A first start on a fresh machine converts SmolLM2 and builds the tiny model before "ready".
READY_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MarketProcess:
    """Start with ``with MarketProcess(folder, base_models, home) as market: ...``."""

    folder: Path
    base_models: tuple[str, ...]
    home: Path
    smoke: bool = True
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def __enter__(self) -> MarketProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def admin_key(self) -> Path:
        """Where ``lwm server init`` writes the market's admin key."""
        return self.folder / "admin.key"

    def start(self) -> None:
        if not self.admin_key.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lwm("server", "init", "--dir", str(self.folder))
        self.port = self.port or free_port()
        command = [
            *self._lwm_command(), "server", "start",
            "--dir", str(self.folder), "--address", f"127.0.0.1:{self.port}",
            "--home", str(self.home), "--grace", "5",
            *[arg for model in self.base_models for arg in ("--base-model", model)],
            *([] if self.smoke else ["--no-smoke"]),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=log, env=self._env(), start_new_session=True
            )
        self._wait_ready()

    def _lwm_command(self) -> list[str]:
        """``lwm`` of this very interpreter (and source tree, through ``PYTHONPATH``)."""
        return [sys.executable, "-m", "client.cli"]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LWM_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}

    def _lwm(self, *args: str, tolerate: type[LwmError] | None = None) -> None:
        """Run one short ``lwm`` command; its one-line error becomes an ``LwmError``."""
        done = subprocess.run(
            [*self._lwm_command(), *args], capture_output=True, text=True, env=self._env()
        )
        if done.returncode == 0 or (tolerate and done.returncode == tolerate.exit_code):
            return
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LwmError(f"lwm {' '.join(args[:2])} failed: {why}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LwmError(f"the market server exited ({self.proc.returncode}); see {self.log}")
            if self._ready_logged():
                return
            time.sleep(0.2)
        self.stop()
        raise LwmError(
            f"the market server was not ready in {READY_TIMEOUT_S:.0f} s; see {self.log}"
        )

    def _ready_logged(self) -> bool:
        for line in self.log.read_text(errors="replace").splitlines()[-200:]:
            if line.startswith("{") and '"ready"' in line:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "ready" and event.get("port") == self.port:
                    return True
        return False

    def stop(self) -> None:
        """SIGTERM (the server drains and exits); SIGKILL if it has not gone in 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # ------------------------------------------------------------ clients

    def connection(self, key: Path | None) -> Connection:
        return Connection(self.address, key_path=key, ca=self.ca)

    def register(self, key_file: Path, role: str, name: str) -> None:
        """Make (once) and register a key pair with ``lwm admin register-key``; registering
        it again is not an error."""
        public_file = key_file.with_suffix(".pub")
        if not key_file.exists():
            private, _ = signing.generate_keypair()
            signing.save_private_key(key_file, private)
        if not public_file.exists():
            public = signing.load_private_key(key_file).public_key()
            signing.save_public_key(public_file, public)
        self._lwm(
            "admin", "register-key", str(public_file), "--role", role, "--name", name,
            "--server", self.address, "--key", str(self.admin_key), "--ca", str(self.ca),
            tolerate=AlreadyExists,
        )  # fmt: skip

"""The simulated market is the real server: ``lwm server start`` as a child process, TLS on
loopback, SQLite in the run folder, keys registered by its admin key.

The folder (CA, admin key, database, blobs) persists between runs, so a second run finds the
learnwares of the first. Logs go to ``server.log`` in the folder rather than a pipe: a pipe
nobody reads would block the server once it fills.
"""

from __future__ import annotations

import contextlib
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

    def start(self) -> None:
        from server.pki import init_server_dir, open_server_dir

        if (self.folder / "admin.key").exists():
            layout = open_server_dir(self.folder)
        else:
            layout = init_server_dir(self.folder)
        self._admin_key = layout.admin_key
        self.port = self.port or free_port()
        command = [
            sys.executable, "-m", "client.cli", "server", "start",
            "--dir", str(self.folder), "--address", f"127.0.0.1:{self.port}",
            "--home", str(self.home), "--grace", "5",
            *[arg for model in self.base_models for arg in ("--base-model", model)],
            *([] if self.smoke else ["--no-smoke"]),
        ]  # fmt: skip
        env = {**os.environ, "LWM_HOME": str(self.home), "HF_HUB_OFFLINE": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=log, env=env, start_new_session=True
            )
        self._wait_ready()

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
        """Make (once) and register a key pair; registering it again is not an error."""
        from client.market import Connection, MarketClient

        if not key_file.exists():
            private, _ = signing.generate_keypair()
            signing.save_private_key(key_file, private)
        public = signing.load_private_key(key_file).public_key()
        admin = Connection(self.address, key_path=self._admin_key, ca=self.ca)
        with MarketClient(admin) as client, contextlib.suppress(AlreadyExists):
            client.register_key(signing.public_key_bytes(public), role, name)

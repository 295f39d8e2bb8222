"""The market as a real process: SIGKILL mid-upload loses nothing committed and leaves no
partial learnware; SIGTERM drains and exits 0."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from builders import build_learnware, random_rkme_spec, rkme_schema, train_lora_adapter, write_specs
from processes import is_alive, is_confined, smoke_pids, wait_for

from client.market import Connection, MarketClient
from server.pki import init_server_dir
from shared import signing
from shared.errors import LwmError
from shared.learnware import pack_tar
from shared.models import model_ref
from shared.proto import market_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    server_dir: Path,
    port: int,
    home: Path,
    *,
    smoke: bool = False,
    grace: float = 5,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """``lwm server start`` (the smoke run off unless ``smoke``; ``extra`` options), once it
    says ready."""
    env = {**os.environ, "LWM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client.cli",
            "server",
            "start",
            "--dir",
            str(server_dir),
            "--address",
            f"127.0.0.1:{port}",
            *([] if smoke else ["--no-smoke"]),
            "--grace",
            f"{grace:g}",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until {"event": "ready", ...} or exit
    if '"ready"' not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line} {proc.stderr.read()[-3000:]}")
    assert json.loads(line)["port"] == port
    return proc


def alice_and_her_package(
    tmp_path: Path, lwm_home, admin: MarketClient, address: str
) -> tuple[MarketClient, signing.Ed25519PublicKey, Path]:
    """Register contributor alice through ``admin``; her client, key and a signed package."""
    private, public = signing.generate_keypair()
    signing.save_private_key(tmp_path / "alice.key", private)
    admin.register_key(signing.public_key_bytes(public), "contributor", "alice")
    ca = admin.conn.ca
    alice = MarketClient(Connection(address, key_path=tmp_path / "alice.key", ca=ca))
    adapter = train_lora_adapter(lwm_home, tmp_path / "adapter")
    schema = rkme_schema(lwm_home)
    spec = write_specs(tmp_path / "spec.safetensors", [random_rkme_spec(schema, seed=3)])
    lw = build_learnware(
        tmp_path / "lw",
        adapter=adapter,
        spec_file=spec,
        base=model_ref("tiny", lwm_home),
        private_key=private,
    )
    return alice, public, lw


def test_sigkill_mid_upload_then_restart_is_consistent(tmp_path, lwm_home):
    layout = init_server_dir(tmp_path / "srv")
    port = free_port()
    address = f"localhost:{port}"
    proc = start_server(layout.dir, port, lwm_home.root)
    try:
        admin = MarketClient(Connection(address, key_path=layout.admin_key, ca=layout.ca_cert))
        alice, public, lw = alice_and_her_package(tmp_path, lwm_home, admin, address)
        schema = rkme_schema(lwm_home)
        data = pack_tar(lw)
        header = pb.SubmitHeader(
            manifest_json=(lw / "manifest.json").read_bytes(),
            signature=(lw / "signature").read_bytes(),
            contributor_key_id=signing.key_id(public),
            total_size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        sent_half = threading.Event()

        def requests():
            yield pb.SubmitRequest(header=header)
            yield pb.SubmitRequest(chunk=pb.Chunk(offset=0, data=data[: len(data) // 2]))
            sent_half.set()
            time.sleep(30)

        future = alice.stub.Submit.future(requests(), timeout=60)
        assert sent_half.wait(20)
        time.sleep(1.0)  # the half is on the server, in a temp file
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with pytest.raises(grpc.RpcError):
            future.result()
        blobs = layout.dir / "blobs"
        assert list((blobs / "tmp").iterdir()), "the killed upload should have left a temp file"

        proc = start_server(layout.dir, port, lwm_home.root)
        assert not list((blobs / "tmp").iterdir()), "restart must clean up the temp file"
        stats = admin.stats()
        assert stats.learnwares_total == 0 and stats.blob_count == 0
        query = random_rkme_spec(schema, seed=3)
        user_key = tmp_path / "uma.key"
        upriv, upub = signing.generate_keypair()
        signing.save_private_key(user_key, upriv)
        admin.register_key(signing.public_key_bytes(upub), "user", "uma")
        uma = MarketClient(Connection(address, key_path=user_key, ca=layout.ca_cert))
        assert uma.search(query) == []
        reply = alice.submit(lw)  # the same package goes through after the restart
        assert reply.status == pb.LEARNWARE_STATUS_USABLE
        assert [r.learnware.id for r in uma.search(query)] == [reply.id]

        proc.send_signal(signal.SIGKILL)  # and once more: the index is rebuilt from the DB
        proc.wait(10)
        proc = start_server(layout.dir, port, lwm_home.root)
        assert [r.learnware.id for r in uma.search(query)] == [reply.id]

        proc.send_signal(signal.SIGTERM)  # graceful: drains and exits 0
        assert proc.wait(30) == 0
        assert '"stopped"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def lwm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LWM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_admin_commands_and_stats_over_the_wire(tmp_path, lwm_home):
    layout = init_server_dir(tmp_path / "srv")
    port = free_port()
    proc = start_server(layout.dir, port, lwm_home.root)
    conn = ["--server", f"localhost:{port}", "--key", str(layout.admin_key)]
    conn += ["--ca", str(layout.ca_cert)]
    try:
        _, public = signing.generate_keypair()
        signing.save_public_key(tmp_path / "alice.pub", public)
        alice_id = signing.key_id(public)

        pub = str(tmp_path / "alice.pub")
        bad = lwm(lwm_home.root, "admin", "register-key", pub, "--role", "chief", *conn)
        registered = lwm(
            lwm_home.root, "admin", "register-key", pub, "--role", "contributor", *conn
        )
        listed = lwm(lwm_home.root, "admin", "list-keys", *conn)
        revoked = lwm(lwm_home.root, "admin", "revoke-key", pub, "--reason", "stolen", *conn)
        active = lwm(lwm_home.root, "admin", "list-keys", *conn)
        every = lwm(lwm_home.root, "admin", "list-keys", "--all", *conn)
        stats = lwm(lwm_home.root, "server", "stats", "--json", *conn)
        text = lwm(lwm_home.root, "server", "stats", *conn)

        assert bad.returncode == 2 and "--role must be" in bad.stderr
        assert registered.returncode == 0, registered.stderr
        assert f"registered {alice_id} (alice) as contributor" in registered.stdout
        assert alice_id in listed.stdout and "contributor" in listed.stdout
        assert f"revoked {alice_id} (alice)" in revoked.stdout
        assert alice_id not in active.stdout and "admin" in active.stdout
        assert f"{alice_id}" in every.stdout and ": stolen)" in every.stdout  # when and why
        assert stats.returncode == 0, stats.stderr
        data = json.loads(stats.stdout)
        assert data["keys_total"] == "1" and data["server_version"] == "0.1.0"
        assert "keys_total" in text.stdout and "uptime_s" in text.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def statuses(admin: MarketClient) -> list[int]:
    """The statuses of every learnware, as the admin sees them now."""
    return [info.status for info in admin.iter_learnwares()]


def test_stops_never_wait_for_a_smoke_run_and_restarts_serve_before_judging(tmp_path, lwm_home):
    """Issue 12: SIGTERM with --grace 10 waited 121 s for a hung smoke run, and a restart
    judged PENDING learnwares before serving (138 s). A stopped (SIGSTOP) smoke run plays
    the hung one here: it never finishes by itself."""
    layout = init_server_dir(tmp_path / "srv")
    port = free_port()
    address = f"localhost:{port}"
    proc = start_server(layout.dir, port, lwm_home.root, smoke=True, grace=2)
    smokes: list[int] = []
    try:
        admin = MarketClient(Connection(address, key_path=layout.admin_key, ca=layout.ca_cert))
        alice, _, lw = alice_and_her_package(tmp_path, lwm_home, admin, address)
        submitting = ThreadPoolExecutor(max_workers=1).submit(alice.submit, lw)
        smokes += hung_smoke_run(proc.pid)

        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = proc.wait(30)

        assert code == 0 and time.monotonic() - start < 2 + 5  # grace + a few seconds
        assert wait_for(lambda: not is_alive(smokes[-1]), 5), "the smoke run outlived the stop"
        with pytest.raises(LwmError):
            submitting.result(timeout=10)

        proc = start_server(layout.dir, port, lwm_home.root, smoke=True, grace=2)
        assert statuses(admin) == [pb.LEARNWARE_STATUS_PENDING]  # serving, judging later
        smokes += hung_smoke_run(proc.pid)  # the background re-judgment's run
        proc.send_signal(signal.SIGKILL)  # a crash: the kernel kills the orphaned smoke run
        proc.wait(10)
        assert wait_for(lambda: not is_alive(smokes[-1]), 5), "the smoke run outlived a crash"

        proc = start_server(layout.dir, port, lwm_home.root, smoke=True, grace=2)
        assert admin.schema() is not None and statuses(admin) == [pb.LEARNWARE_STATUS_PENDING]
        usable = [pb.LEARNWARE_STATUS_USABLE]
        assert wait_for(lambda: statuses(admin) == usable, 240, every_s=1), statuses(admin)
    finally:
        proc.kill()
        for pid in smokes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def hung_smoke_run(server_pid: int) -> list[int]:
    """Wait for the server's smoke run to confine itself, then stop it (SIGSTOP): it
    hangs from now on."""
    found = wait_for(lambda: [p for p in smoke_pids(server_pid) if is_confined(p)], 120)
    assert len(found) == 1, f"expected one confined smoke run of the server, found {found}"
    os.kill(found[0], signal.SIGSTOP)
    return found


def _second_server(
    server_dir: Path, port: int, home: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LWM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    args = ["server", "start", "--dir", str(server_dir), "--address", f"127.0.0.1:{port}"]
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args, "--no-smoke", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_second_server_neither_shares_the_port_nor_cleans_the_first_ones_blobs(
    tmp_path, lwm_home
):
    """gRPC sets SO_REUSEPORT by default: a second server on a busy port used to start and
    share it, after its start-up cleanup had deleted the first one's uploads in progress."""
    init_server_dir(tmp_path / "srv")
    init_server_dir(tmp_path / "other")
    port = free_port()
    first = start_server(tmp_path / "srv", port, lwm_home.root)
    try:
        upload = tmp_path / "srv" / "blobs" / "tmp" / "upload-in-progress"
        upload.write_bytes(b"half a package")
        same_blobs = _second_server(tmp_path / "srv", free_port(), lwm_home.root)
        assert same_blobs.returncode == 16, same_blobs.stderr
        assert "in use by another running server" in same_blobs.stderr.strip().splitlines()[-1]
        assert upload.read_bytes() == b"half a package"
        same_port = _second_server(tmp_path / "other", port, lwm_home.root)
        assert same_port.returncode == 2, same_port.stderr
        last = same_port.stderr.strip().splitlines()[-1]
        assert last.startswith("lwm: error: cannot listen on"), same_port.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)

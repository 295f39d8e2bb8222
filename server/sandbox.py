"""The smoke run's sandbox: what one run may use, and how its process is kept on a leash.

The smoke subprocess loads an untrusted adapter into torch (``server/smoke.py``). A timeout
alone bounds only its wall time; here are the rest:

* ``SmokeLimits``: the market's limits for one run (address space, CPU seconds, open files,
  size of any file written). The market passes them on the subprocess's command line and
  the subprocess applies them to itself with ``confine``, first thing, before it reads the
  package (no ``preexec_fn``: it is unsafe in a threaded server).
* ``confine`` also asks the kernel to SIGKILL the subprocess when its parent dies
  (``PR_SET_PDEATHSIG``), so a server that is killed leaves no smoke run burning CPU. The
  kernel means the parent *thread*: the market starts each run from a thread that waits
  for it, so that thread outlives the run unless the server dies.
* ``kill_group`` ends a run and everything it started (each run has its own process group).

Linux only (``prctl``); elsewhere ``confine`` applies the rlimits it can and skips the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from shared.errors import InvalidInput

_MIB = 1024 * 1024
_PR_SET_PDEATHSIG = 1
#: Seconds of CPU between the soft limit (SIGXCPU, which ends the run) and the hard one.
_CPU_GRACE_S = 5


@dataclass(frozen=True)
class SmokeLimits:
    """What one smoke subprocess may use; exceeding any ends (and rejects) the run.

    ``memory_bytes`` caps the address space (RLIMIT_AS: virtual memory, which torch's
    libraries and thread stacks inflate well beyond what is resident; measured peaks:
    about 1.1 GiB for the tiny model, 1.9 GiB for SmolLM2-135M; resident 0.4 and 1.0 GiB,
    measured 2026-11). ``cpu_s`` caps CPU time
    (RLIMIT_CPU; the run uses one torch thread, so it is about its wall time).
    ``open_files`` caps descriptors (RLIMIT_NOFILE) and ``file_bytes`` the size of any
    file it writes (RLIMIT_FSIZE: it writes nothing of its own). Core dumps are off.
    """

    memory_bytes: int = 3 * 1024 * _MIB
    cpu_s: int = 150
    open_files: int = 256
    file_bytes: int = 16 * _MIB

    def __post_init__(self) -> None:
        floors = {"memory_bytes": 64 * _MIB, "cpu_s": 1, "open_files": 16, "file_bytes": 0}
        for name, floor in floors.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < floor:
                raise InvalidInput(f"smoke limit {name} must be an int >= {floor}, got {value!r}")

    def to_args(self) -> list[str]:
        """The command-line options ``from_args`` reads back in the subprocess."""
        return [
            "--memory-bytes", str(self.memory_bytes),
            "--cpu-s", str(self.cpu_s),
            "--open-files", str(self.open_files),
            "--file-bytes", str(self.file_bytes),
        ]  # fmt: skip


def confine(limits: SmokeLimits, parent_pid: int) -> None:
    """Apply ``limits`` to this process and tie its life to ``parent_pid``'s.

    Exits at once (code 2: the market's side) when the parent already died before the
    kernel was asked to watch it (its pid no longer being our parent pid)."""
    _die_with_parent(parent_pid)
    import resource

    rlimits = {
        resource.RLIMIT_AS: (limits.memory_bytes, limits.memory_bytes),
        resource.RLIMIT_CPU: (limits.cpu_s, limits.cpu_s + _CPU_GRACE_S),
        resource.RLIMIT_NOFILE: (limits.open_files, limits.open_files),
        resource.RLIMIT_FSIZE: (limits.file_bytes, limits.file_bytes),
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, (soft, hard) in rlimits.items():
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:  # never ask for more than we may have
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(2)  # the parent died before the kernel watched it: nobody wants this run


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process``'s process group (it leads one: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)

"""The checker's smoke run: base model + adapter, a few greedy tokens, finite logits.

Two halves in one module, so the protocol between them lives in one place:

* ``run_smoke`` (the market side) starts ``python -m server.smoke`` with no shell, offline
  Hugging Face settings, a timeout and ``SmokeLimits`` (``server/sandbox.py``) in its own
  process group, and turns its exit code and last stdout line into a ``SmokeResult``. A
  subprocess because loading an untrusted adapter may crash, hang or eat memory; none of
  that may reach the server.
* ``main`` (the subprocess) first confines itself (rlimits; killed when its parent dies),
  then loads the base model by name with ``load_causal_lm``, applies the
  adapter with plain ``PeftModel.from_pretrained`` from a private folder holding only the
  package's ``adapter_model.safetensors`` and ``adapter_config.json`` (so peft can never fall
  back to a pickled ``.bin``; ``torch.load`` is also disabled meanwhile), checks that peft
  loaded exactly the file's tensors, and generates greedily, checking every logit is finite.

Protocol: the subprocess prints one JSON object as its last stdout line,
``{"ok": true, "tokens": [...]}`` or ``{"ok": false, "reason": "..."}``, and exits 0 (ok),
1 (the adapter is at fault: reject) or 2 (the base model could not be loaded: the market's
fault, ``run_smoke`` raises ``ModelUnavailable``). Any other exit is a crash: rejected with
the last line of stderr. Importing this module is cheap; torch loads only in ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.sandbox import SmokeLimits, confine, kill_group
from shared.errors import ModelUnavailable
from shared.home import Home
from shared.learnware.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    from server.checker import AcceptedBase

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_INTERNAL = 2
PROMPT = "The market checks every learnware before anyone may use it. It"
_REASON_CHARS = 400
#: Signals the kernel sends a smoke run that exceeds one of its ``SmokeLimits``.
_LIMIT_SIGNALS: dict[int, str] = {
    int(signal.SIGXCPU): " (over its CPU time limit)",
    int(signal.SIGXFSZ): " (over its file size limit)",
}
#: The folder holding ``server/``: the subprocess runs there, never in a package folder.
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SmokeResult:
    """Outcome of one smoke run; ``seconds`` is the subprocess's wall time, start to exit."""

    ok: bool
    reason: str
    seconds: float
    tokens: tuple[int, ...] = ()
    timed_out: bool = False


# ---------------------------------------------------------------- market side


def run_smoke(
    package_dir: Path,
    base: AcceptedBase,
    home: Home,
    timeout_s: float = 120.0,
    *,
    max_new_tokens: int = 4,
    limits: SmokeLimits | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> SmokeResult:
    """Smoke-run a statically checked package in a subprocess killed after ``timeout_s``.

    The subprocess runs under ``limits`` (default ``SmokeLimits()``); ``on_start`` is
    given its process as soon as it exists (the judging gate keeps it, to kill it when
    the market stops). Returns a failed ``SmokeResult`` for anything the adapter causes
    (error, crash, NaN, a limit exceeded, timeout); raises ``ModelUnavailable`` when the
    base model could not be loaded or is not the weights ``base.ref.sha256`` names, which
    is the market's fault, not the contributor's.
    """
    command = smoke_command(package_dir, base, home, max_new_tokens, limits or SmokeLimits())
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=_PROJECT_ROOT,
        env=_smoke_env(),
        start_new_session=True,  # its own process group, so a timeout kills all of it
    )
    if on_start is not None:
        on_start(process)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.communicate()
        seconds = time.monotonic() - start
        return SmokeResult(False, f"timed out after {timeout_s:g} s", seconds, timed_out=True)
    return _outcome(process.returncode, stdout, stderr, time.monotonic() - start)


def smoke_command(
    package_dir: Path,
    base: AcceptedBase,
    home: Home,
    max_new_tokens: int,
    limits: SmokeLimits,
    parent_pid: int | None = None,
) -> list[str]:
    """The subprocess's command line; ``parent_pid`` (default: this process) is the
    process whose death kills it."""
    return [
        sys.executable, "-m", "server.smoke",
        "--package", str(Path(package_dir).resolve()),
        "--base", base.name,
        "--sha256", base.ref.sha256,
        "--home", str(home.root),
        "--tokens", str(max_new_tokens),
        "--parent-pid", str(os.getpid() if parent_pid is None else parent_pid),
        *limits.to_args(),
    ]  # fmt: skip


def _smoke_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p),
    )
    return env


def _outcome(code: int, stdout: bytes, stderr: bytes, seconds: float) -> SmokeResult:
    report = _last_json_line(stdout)
    if code == EXIT_OK and report is not None and report.get("ok") is True:
        return SmokeResult(True, "", seconds, tuple(int(t) for t in report.get("tokens", [])))
    reason = str(report.get("reason", "")) if report is not None else ""
    if code == EXIT_INTERNAL:
        raise ModelUnavailable(one_line(f"smoke run could not start: {reason or _tail(stderr)}"))
    if not reason:
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        reason = f"{how}{_LIMIT_SIGNALS.get(-code, '')}: {_tail(stderr)}"
    return SmokeResult(False, one_line(reason), seconds)


def _last_json_line(stdout: bytes) -> dict[str, Any] | None:
    lines = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _tail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def one_line(text: str) -> str:
    """Collapse whitespace and cap the length: reasons are stored and shown as one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _REASON_CHARS else flat[: _REASON_CHARS - 3] + "..."


# ---------------------------------------------------------------- subprocess side


class _Rejected(Exception):
    """The adapter failed the smoke run; the message is the reason."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m server.smoke``; see the module docstring for the protocol."""
    args = _parse(argv)
    confine(_limits(args), args.parent_pid)  # first: nothing of the package is read before
    try:
        lm = _load_base(args.base, Path(args.home), args.sha256)
    except Exception as err:  # any failure here is the market's set-up, not the adapter
        reason = f"base model {args.base!r}: {_describe(err, args.memory_bytes)}"
        return _emit(EXIT_INTERNAL, reason=reason)
    try:
        tokens = _smoke(lm, Path(args.package), args.tokens)
    except _Rejected as err:
        return _emit(EXIT_REJECTED, reason=str(err))
    except Exception as err:  # peft/torch errors on a bad adapter: reject with the reason
        reason = f"adapter failed to load or run: {_describe(err, args.memory_bytes)}"
        return _emit(EXIT_REJECTED, reason=reason)
    return _emit(EXIT_OK, tokens=tokens)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server.smoke", description=__doc__)
    parser.add_argument("--package", required=True, help="learnware folder (already verified)")
    parser.add_argument("--base", required=True, help="base model name for load_causal_lm")
    parser.add_argument("--sha256", required=True, help="expected weights sha256 of the base")
    parser.add_argument("--home", required=True, help="lwm home holding the base model")
    parser.add_argument("--tokens", type=int, default=4, help="tokens to generate")
    parser.add_argument("--parent-pid", type=int, required=True, help="die with this process")
    for name in ("memory-bytes", "cpu-s", "open-files", "file-bytes"):
        parser.add_argument(f"--{name}", type=int, required=True, help="see SmokeLimits")
    return parser.parse_args(argv)


def _limits(args: argparse.Namespace) -> SmokeLimits:
    return SmokeLimits(args.memory_bytes, args.cpu_s, args.open_files, args.file_bytes)


def _emit(code: int, **fields: Any) -> int:
    """Print the report as the last stdout line; return the exit code that goes with it."""
    print(json.dumps({"ok": code == EXIT_OK, **fields}), flush=True)
    return code


def _describe(err: BaseException, memory_bytes: int) -> str:
    """The error in one line; out of memory also names the limit (an operator may have
    set it too low for the base model: the reason must say which limit was hit)."""
    text = f"{type(err).__name__}: {err}"
    if _out_of_memory(err):
        text = f"out of memory under the smoke run's limit of {memory_bytes // 2**20} MiB ({text})"
    return one_line(text)


def _out_of_memory(err: BaseException | None) -> bool:
    """Whether ``err`` or its causes say an allocation or a library mapping failed (under
    RLIMIT_AS, importing torch fails with "failed to map segment from shared object")."""
    signs = ("memory", "failed to map segment")
    while err is not None:
        if isinstance(err, MemoryError) or any(s in str(err).lower() for s in signs):
            return True
        err = err.__cause__ or err.__context__
    return False


def _load_base(name: str, home: Path, sha256: str) -> Any:
    from shared.models.causal import offline

    offline()
    import peft  # noqa: F401  (a missing peft is the market's fault: fail in this stage)
    import torch
    from transformers.utils import logging as hf_logging

    from shared.models import load_causal_lm

    torch.set_num_threads(1)  # several uploads may be checked at once on a small server
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    lm = load_causal_lm(name, Home(home))
    if lm.ref.sha256 != sha256:
        raise ModelUnavailable(f"weights sha256 {lm.ref.sha256[:16]}... != {sha256[:16]}...")
    return lm


def _smoke(lm: Any, package: Path, max_new_tokens: int) -> list[int]:
    from peft import PeftModel
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="lwm-smoke-") as tmp:
        folder = _adapter_folder(package, Path(tmp))
        weights = load_file(str(folder / ADAPTER_WEIGHTS))
        with _no_pickle():
            model = PeftModel.from_pretrained(lm.model, str(folder), is_trainable=False)
    model.eval()
    _check_loaded(model, weights)
    return _greedy(model, lm.tokenizer, max_new_tokens)


def _adapter_folder(package: Path, into: Path) -> Path:
    """A private folder with links to exactly the two adapter files peft needs."""
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        source = package / name
        if source.is_symlink() or not source.is_file():
            raise _Rejected(f"{name}: missing or not a regular file")
        (into / name).symlink_to(source.resolve())
    return into


@contextlib.contextmanager
def _no_pickle() -> Iterator[None]:
    """Make any unpickling attempt during adapter loading fail loudly (defence in depth)."""
    import peft.utils.save_and_load as peft_io
    import torch

    def refuse(*args: object, **kwargs: object) -> None:
        raise _Rejected("adapter loading tried torch.load (pickle); only safetensors accepted")

    saved = (torch.load, peft_io.torch_load)
    torch.load, peft_io.torch_load = refuse, refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load, peft_io.torch_load = saved  # type: ignore[assignment]


def _check_loaded(model: Any, weights: dict[str, Any]) -> None:
    """peft must have loaded exactly the file's tensors: none ignored, none invented."""
    import torch
    from peft import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(model, save_embedding_layers=False)
    ignored = sorted(set(weights) - set(loaded))
    if ignored:
        raise _Rejected(
            f"peft ignored {len(ignored)} adapter tensor(s), e.g. {ignored[0]!r}: the config's "
            "target_modules / layers_to_transform / exclude_modules do not cover them"
        )
    invented = sorted(set(loaded) - set(weights))
    if invented:
        raise _Rejected(
            f"the config adds LoRA weights the file lacks, e.g. {invented[0]!r} "
            "(they would be randomly initialised)"
        )
    for name, tensor in weights.items():
        got = loaded[name].detach().float()
        if not torch.allclose(got, tensor.float(), rtol=0.0, atol=0.0, equal_nan=True):
            raise _Rejected(f"adapter tensor {name!r} was not loaded as stored")


def _greedy(model: Any, tokenizer: Any, max_new_tokens: int) -> list[int]:
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    tokens: list[int] = []
    with torch.no_grad():
        for step in range(max_new_tokens):
            logits = model(input_ids=ids).logits
            if not bool(torch.isfinite(logits).all()):
                raise _Rejected(f"logits are not finite (NaN or inf) at generation step {step}")
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], dtype=ids.dtype)], dim=1)
    return tokens


if __name__ == "__main__":
    sys.exit(main())

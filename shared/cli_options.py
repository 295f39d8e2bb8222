"""Typer option types shared by every ``lwm`` command group (client and server sides), so
a flag is spelled and explained the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ServerOpt = Annotated[str, typer.Option("--server", help="Market address HOST:PORT.")]
KeyOpt = Annotated[Path, typer.Option("--key", help="Your Ed25519 private key (PEM).")]
CaOpt = Annotated[Path | None, typer.Option("--ca", help="CA certificate to trust (TLS).")]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="No TLS: loopback only, for development.")
]
CertOpt = Annotated[Path | None, typer.Option("--cert", help="Client certificate (mTLS).")]
CertKeyOpt = Annotated[Path | None, typer.Option("--cert-key", help="Client TLS key (mTLS).")]
HomeOpt = Annotated[
    str | None, typer.Option("--home", help="Cache folder (default $LWM_HOME or ~/.cache/lwm).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")]
# Every command that reads user data takes these four beside its data path, and passes one
# ``shared.data.DataSource(path, split, text_column, prompt_column, response_column)``.
SplitOpt = Annotated[
    str | None,
    typer.Option("--split", help="Split of a DatasetDict folder (default: train; never merged)."),
]
TextColumnOpt = Annotated[
    str | None, typer.Option("--text-column", help="Column of plain text (default: text).")
]
PromptColumnOpt = Annotated[
    str | None, typer.Option("--prompt-column", help="Column of prompts (default: prompt).")
]
ResponseColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--response-column", help="Column of responses (default: response or completion)."
    ),
]
# Every command that runs a model takes these (``shared.models.device.resolve``, before any
# model loads); commands that only make specs take --device alone (specs are float32).
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (cuda, else mps, else cpu), cpu, cuda or mps.")
]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32 (default), bfloat16 or float16.")
]
DATA_HELP = "JSONL, JSON, CSV, parquet, Arrow, .txt or a save_to_disk folder."


def console(stderr: bool = False, width: int | None = None):  # type: ignore[no-untyped-def]
    """The one rich console of every ``lwm`` command: lines are never hard-wrapped (scripts,
    logs and tests read them whole; a long path must not split a figure from its label)."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, width=width)


def epsilon_text(epsilon: float | None) -> str:
    """An epsilon as every command prints it; None is a release without DP, said plainly."""
    return "none (no DP)" if epsilon is None else f"{epsilon:.3g}"


def at_least(flag: str, low: float):  # type: ignore[no-untyped-def]
    """A typer ``callback`` refusing ``flag`` values below ``low`` with a one-line reason
    (``InvalidInput``, exit 2) before any work; click's own ``min=`` prints a usage box."""

    def check(value: float | None) -> float | None:
        if value is not None and value < low:
            from shared.errors import InvalidInput

            raise InvalidInput(f"{flag} must be at least {low:g}, got {value:g}")
        return value

    return check


def count_option(flag: str, help: str = ""):  # type: ignore[no-untyped-def]
    """``typer.Option(flag)`` for a count (steps, sizes, ranks, top-k): 1 or more."""
    return typer.Option(flag, help=help, callback=at_least(flag, 1))

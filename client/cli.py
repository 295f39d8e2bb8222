"""The ``lwm`` command line. Commands parse options, call library functions and print.

Every ``LwmError`` ends the process with its class's exit code and a one-line reason on
stderr; nothing here holds logic worth testing apart from the functions it calls. Heavy
libraries are imported inside commands so ``lwm --help`` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from client.cli_user import resolve_home
from shared.cli_options import (
    DATA_HELP,
    DeviceOpt,
    ForceOpt,
    HomeOpt,
    PromptColumnOpt,
    ResponseColumnOpt,
    SplitOpt,
    TextColumnOpt,
    console,
)
from shared.errors import InvalidInput, LwmError

app = typer.Typer(
    help="SLM learnware market: DP specifications, signed LoRA learnwares, private search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
spec_app = typer.Typer(help="Make and compare specifications.", no_args_is_help=True)
models_app = typer.Typer(help="Models available offline on this machine.", no_args_is_help=True)
data_app = typer.Typer(help="Read and check data files.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
keys_app = typer.Typer(help="Ed25519 keys that identify you to the market.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _attach_server_groups() -> None:
    """``lwm server init/start`` live in server/cli.py (typer only at import); ``lwm admin``
    and ``lwm server stats``, clients of a running market, in client/cli_admin.py."""
    from client import cli_admin
    from server.cli import server_app

    app.add_typer(server_app, name="server")
    cli_admin.register(app, server_app)


_attach_server_groups()


def _attach_command_modules() -> None:
    """Commands of the contributor and user workflows, each module with ``register(app)``."""
    from client import (
        cli_contribute,
        cli_federate,
        cli_market,
        cli_privacy,
        cli_reuse,
        cli_simulate,
        cli_user,
    )

    cli_contribute.register(app)
    cli_market.register(app)
    cli_user.register(app)
    cli_reuse.register(app)
    cli_privacy.register(app)
    cli_federate.register(app)
    cli_simulate.register(app)


_attach_command_modules()


def _budget(epsilon: float | None, delta: float, no_dp: bool):  # type: ignore[no-untyped-def]
    from shared.privacy import PrivacyBudget

    if no_dp:
        console(stderr=True).print(
            "[bold yellow]warning:[/] --no-dp: the spec is NOT differentially private"
        )
        return PrivacyBudget(None, delta)
    return PrivacyBudget(4.0 if epsilon is None else epsilon, delta)


def _schema(schema_file: Path | None, pave_model: str, home: str | None):  # type: ignore[no-untyped-def]
    from shared.spec.schema import MarketSchema

    if schema_file is not None:
        if not schema_file.is_file():
            from shared.errors import InvalidInput

            raise InvalidInput(f"schema file not found: {schema_file}")
        return MarketSchema.from_json(schema_file.read_text())
    from shared.spec.defaults import default_schema

    return default_schema(resolve_home(home), pave_model=pave_model)


@spec_app.command("make")
def spec_make(
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Where to write the spec (.safetensors).")],
    kind: Annotated[str, typer.Option("--kind", help="rkme or pave.")] = "rkme",
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="DP epsilon (default 4).")
    ] = None,
    delta: Annotated[float, typer.Option("--delta", help="DP delta.")] = 1e-5,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Release without DP (warned).")] = False,
    schema_file: Annotated[
        Path | None, typer.Option("--schema", help="Market schema JSON (default: local).")
    ] = None,
    pave_model: Annotated[str, typer.Option("--pave-model", help="Spec model for PAVE.")] = "tiny",
    force: ForceOpt = False,
    device: DeviceOpt = "auto",
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    home: HomeOpt = None,
) -> None:
    """Compute a (DP) specification of DATA locally; only the spec is written."""
    from client.specs import SpecMaker
    from shared.data import DataSource, load_dataset
    from shared.files import check_writable
    from shared.models.device import resolve
    from shared.spec.schema import KINDS

    check_writable(out, force=force)
    placement = resolve(device)

    if kind not in KINDS:
        from shared.errors import SchemaMismatch

        raise SchemaMismatch(f"unknown spec kind {kind!r}; known kinds: {', '.join(KINDS)}")
    budget = _budget(epsilon, delta, no_dp)
    dataset = load_dataset(DataSource(data, split, text_column, prompt_column, response_column))
    maker = SpecMaker(_schema(schema_file, pave_model, home), resolve_home(home), placement)
    texts = dataset.texts()
    spec = maker.make(texts, kind, budget, progress=True)
    spec.save(out)
    eps = "none (no DP)" if spec.privacy.epsilon is None else f"{spec.privacy.epsilon:.3g}"
    published = "" if spec.n == len(texts) else f" (published as a DP count of {spec.n})"
    console().print(
        f"wrote {out}: {spec.kind} spec of {len(texts)} texts{published}, dim {spec.dim}, "
        f"schema {spec.schema_id}, epsilon {eps}, delta {spec.privacy.delta:g}"
    )


@spec_app.command("rank")
def spec_rank(
    query: Annotated[Path, typer.Argument(help="The query spec file.")],
    candidates: Annotated[list[Path], typer.Argument(help="Candidate spec files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Rank CANDIDATES by distance to QUERY, best first."""
    from shared.spec.ranking import rank
    from shared.spec.record import Specification

    q = Specification.load(query)
    specs = [Specification.load(p) for p in candidates]
    ranked = rank(q, specs)
    rows = [
        {
            "rank": i + 1,
            "spec": str(candidates[r.position]),
            "distance": r.distance,
            "score": r.score,
        }
        for i, r in enumerate(ranked)
    ]
    if as_json:
        print(json.dumps({"query": str(query), "kind": q.kind, "results": rows}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{q.kind} ranking for {query}")
    for col in ("rank", "spec", "distance", "score"):
        table.add_column(col, justify="right" if col != "spec" else "left")
    for row in rows:
        table.add_row(
            str(row["rank"]),
            Path(str(row["spec"])).name,
            f"{row['distance']:.5f}",
            f"{row['score']:.4f}",
        )
    console().print(table)


@spec_app.command("schema")
def spec_schema(
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON here.")] = None,
    pave_model: Annotated[str, typer.Option("--pave-model", help="Spec model for PAVE.")] = "tiny",
    force: ForceOpt = False,
    home: HomeOpt = None,
) -> None:
    """Print (or write) the default local market schema as JSON."""
    from shared.files import check_writable

    if out is not None:
        check_writable(out, force=force)
    text = _schema(None, pave_model, home).to_json()
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n")
        console().print(f"wrote {out}")


@models_app.command("list")
def models_list(
    paths: Annotated[
        bool,
        typer.Option("--paths", help="One line each: name, id, sha256 and local folder (TSV)."),
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Models this machine can load offline, and how to get the missing ones."""
    from rich.table import Table

    from shared.models import list_models

    if paths:  # the folder is what plain transformers / peft load as the base model
        for info in list_models(resolve_home(home)):
            where = str(info.path) if info.path else f"not here yet: {info.how_to_get}"
            print("\t".join((info.name, info.model_id, info.sha256 or "-", where)))
        return
    table = Table(title="models")
    for col in ("name", "available", "cached", "sha256", "description / how to get"):
        table.add_column(col)
    for info in list_models(resolve_home(home)):
        how = info.description if info.available else info.how_to_get
        sha = (info.sha256 or "")[:12]
        table.add_row(
            info.name, "yes" if info.available else "no", "yes" if info.cached else "no", sha, how
        )
    console().print(table)


@data_app.command("inspect")
def data_inspect(
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
) -> None:
    """Summarise a data file: format, split, records, fields and lengths (no text is
    printed)."""
    from shared.data import DataSource, load_dataset

    source = DataSource(data, split, text_column, prompt_column, response_column)
    summary = load_dataset(source).summary()
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    for key, value in summary.items():
        console().print(f"[bold]{key}[/]: {value}")


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="File stem: NAME.key and NAME.pub.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the key pair in.")] = Path(
        "."
    ),
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Make an Ed25519 key pair: NAME.key (mode 0600, keep it secret) and NAME.pub."""
    from shared import signing
    from shared.errors import InvalidInput

    if not name or "/" in name or name.startswith("."):
        raise InvalidInput(f"key name must be a plain file stem, got {name!r}")
    out.mkdir(parents=True, exist_ok=True)
    private, public = signing.generate_keypair()
    signing.save_private_key(out / f"{name}.key", private, overwrite=overwrite)
    signing.save_public_key(out / f"{name}.pub", public, overwrite=overwrite)
    console().print(
        f"made {out / (name + '.key')} (private, 0600) and {out / (name + '.pub')}; "
        f"key id {signing.key_id(public)}"
    )


def main() -> None:
    """Console entry point: LwmError -> one line on stderr and the error's exit code; an
    OSError on a path the caller gave -> one line and exit 2 (never a traceback)."""
    # Library progress bars (HF weight loading) would drown ours and break one-line errors.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except LwmError as exc:
        print(f"lwm: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a path the caller gave: not writable, a file not a folder, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lwm: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(InvalidInput.exit_code)
    except KeyboardInterrupt:
        print("lwm: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

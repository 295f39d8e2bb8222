"""``lwm contribute``, ``lwm package build`` and ``lwm package verify``: the contributor's
commands.

Attached by ``client.cli`` through ``register(app)``. Commands only parse, call
``client.contribute`` and print; every ``LwmError`` becomes one line on stderr and the
error's exit code in ``client.cli.main``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from client.finetune import FinetuneConfig
from shared.cli_options import (
    DATA_HELP,
    DeviceOpt,
    DtypeOpt,
    HomeOpt,
    JsonOpt,
    PromptColumnOpt,
    ResponseColumnOpt,
    SplitOpt,
    TextColumnOpt,
    console,
    count_option,
    epsilon_text,
)
from shared.errors import InvalidInput, LwmError

if TYPE_CHECKING:
    from client.contribute import ContributeConfig
    from client.publish import LearnwareCard, SpecSettings
    from shared.learnware import DpLedger

package_app = typer.Typer(help="Build and check learnware packages.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("contribute")(contribute_command)
    app.add_typer(package_app, name="package")


def contribute_command(
    data: Annotated[Path, typer.Argument(help=f"Your texts: {DATA_HELP}")],
    name: Annotated[str, typer.Option("--name", help="Learnware name (a-z, 0-9, . _ -).")],
    domain: Annotated[str, typer.Option("--domain", help="Domain, e.g. finance.")],
    task: Annotated[str, typer.Option("--task", help="Task, e.g. text-generation.")],
    license: Annotated[str, typer.Option("--license", help="SPDX id of the adapter's licence.")],
    key: Annotated[Path, typer.Option("--key", help="Your Ed25519 private key (signs).")],
    spec_epsilon: Annotated[
        float, typer.Option("--spec-epsilon", help="DP epsilon of the specification.")
    ],
    base_model: Annotated[
        str, typer.Option("--base-model", help="smollm2-135m, tiny or a local HF folder.")
    ],
    spec: Annotated[str, typer.Option("--spec", help="rkme, pave, or rkme,pave.")],
    description: Annotated[str, typer.Option("--description", help="What it is good at.")] = "",
    dp_sgd: Annotated[
        bool, typer.Option("--dp-sgd", help="Train the adapter with DP-SGD.")
    ] = False,
    train_epsilon: Annotated[
        float | None, typer.Option("--train-epsilon", help="DP epsilon of the adapter.")
    ] = None,
    delta: Annotated[float, typer.Option("--delta", help="DP delta of every part.")] = 1e-5,
    steps: Annotated[int, count_option("--steps", "Training steps.")] = FinetuneConfig.steps,
    batch_size: Annotated[
        int, count_option("--batch-size", "(Expected) batch size.")
    ] = FinetuneConfig.batch_size,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate (default: Adam 1e-2, SGD 0.5).")
    ] = None,
    optimizer: Annotated[
        str, typer.Option("--optimizer", help="auto (AdamW; SGD under DP), adam or sgd.")
    ] = FinetuneConfig.optimizer,
    lora_r: Annotated[int, count_option("--lora-r", "LoRA rank.")] = FinetuneConfig.rank,
    lora_alpha: Annotated[int, count_option("--lora-alpha", "LoRA alpha.")] = FinetuneConfig.alpha,
    targets: Annotated[
        str, typer.Option("--target-modules", help="Comma-separated LoRA modules.")
    ] = ",".join(FinetuneConfig.target_modules),
    clip_norm: Annotated[
        float, typer.Option("--clip-norm", help="DP-SGD per-sample clip norm.")
    ] = FinetuneConfig.clip_norm,
    contributor: Annotated[
        str | None, typer.Option("--contributor", help="Your display name (default: key stem).")
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Market address HOST:PORT.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Only package (signed) into this new folder.")
    ] = None,
    ca: Annotated[Path | None, typer.Option("--ca", help="The market's CA certificate.")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC (loopback only).")
    ] = False,
    client_cert: Annotated[Path | None, typer.Option("--client-cert", help="mTLS cert.")] = None,
    client_key: Annotated[Path | None, typer.Option("--client-key", help="mTLS key.")] = None,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    home: Annotated[str | None, typer.Option("--home", help="Cache folder.")] = None,
) -> None:
    """Fine-tune a LoRA learnware on DATA, make its DP spec, sign it and submit it (or --out)."""
    from client.contribute import ContributeConfig, contribute, make_learnware
    from shared.data import DataSource
    from shared.home import Home
    from shared.models.device import resolve

    if (server is None) == (out is None):
        raise InvalidInput("give exactly one of --server ADDR (submit) or --out DIR (package)")
    if dp_sgd != (train_epsilon is not None):
        raise InvalidInput("--dp-sgd and --train-epsilon E go together")
    config = ContributeConfig(
        learnware=_card(name, domain, task, description, license, contributor or key.stem),
        base_model=base_model,
        spec=_spec_settings(spec, spec_epsilon),
        delta=delta,
        finetune=FinetuneConfig(
            rank=lora_r,
            alpha=lora_alpha,
            target_modules=tuple(t.strip() for t in targets.split(",") if t.strip()),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            dp_epsilon=train_epsilon,
            delta=delta,
            clip_norm=clip_norm,
        ),
        placement=resolve(device, dtype),
    )
    if not config.finetune.budget.is_private:
        console(stderr=True).print(
            "[bold yellow]warning:[/] no --dp-sgd: the adapter is NOT differentially private"
        )
    lwm_home = Home.resolve(home)
    source = DataSource(data, split, text_column, prompt_column, response_column)
    if out is not None:
        package = make_learnware(source, config, key, out, home=lwm_home, progress=True)
        console().print(f"wrote {package.folder}: {_summary(config, package.manifest.dp)}")
        return
    from client.cli_user import connection

    assert server is not None  # exactly one of server/out, checked above
    conn = connection(server, key, ca, insecure, client_cert, client_key)
    verdict = contribute(source, config, conn, home=lwm_home, progress=True)
    if verdict.status == "REJECTED":
        raise LwmError(f"the market rejected learnware {verdict.learnware_id}: {verdict.reason}")
    summary = _summary(config, verdict.manifest.dp)
    console().print(f"learnware {verdict.learnware_id} is {verdict.status}: {summary}")


@package_app.command("build")
def package_build(
    adapter: Annotated[
        Path, typer.Option("--adapter", help="A peft LoRA adapter folder, trained anywhere.")
    ],
    data: Annotated[Path, typer.Option("--data", help=f"Texts for the DP specs: {DATA_HELP}")],
    name: Annotated[str, typer.Option("--name", help="Learnware name (a-z, 0-9, . _ -).")],
    domain: Annotated[str, typer.Option("--domain", help="Domain, e.g. finance.")],
    task: Annotated[str, typer.Option("--task", help="Task, e.g. text-generation.")],
    license: Annotated[str, typer.Option("--license", help="SPDX id of the adapter's licence.")],
    key: Annotated[Path, typer.Option("--key", help="Your Ed25519 private key (signs).")],
    base_model: Annotated[
        str,
        typer.Option("--base-model", help="The adapter's base: smollm2-135m, tiny or a folder."),
    ],
    spec: Annotated[str, typer.Option("--spec", help="rkme, pave, or rkme,pave.")] = "rkme",
    spec_epsilon: Annotated[
        float, typer.Option("--spec-epsilon", help="DP epsilon of each specification.")
    ] = 4.0,
    delta: Annotated[float, typer.Option("--delta", help="DP delta of every part.")] = 1e-5,
    description: Annotated[str, typer.Option("--description", help="What it is good at.")] = "",
    contributor: Annotated[
        str | None, typer.Option("--contributor", help="Your display name (default: key stem).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="New folder for the package (default: ./NAME).")
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Wrap an existing LoRA adapter with DP specs of --data, a manifest and your signature
    (submit it with ``lwm market submit``). Its training is unknown here, so the package
    claims no DP for the adapter: its total epsilon is none."""
    from client.contribute import ContributeConfig, package_adapter
    from shared.data import DataSource
    from shared.home import Home
    from shared.models.device import resolve

    card = _card(name, domain, task, description, license, contributor or key.stem)
    settings = _spec_settings(spec, spec_epsilon)
    config = ContributeConfig(card, base_model, settings, delta, placement=resolve(device))
    source = DataSource(data, split, text_column, prompt_column, response_column)
    package = package_adapter(
        adapter,
        source,
        config,
        key,
        out or Path(name),
        home=Home.resolve(home),
        progress=not as_json,
    )
    if as_json:
        manifest = package.manifest
        print(
            json.dumps(
                {"folder": str(package.folder), "manifest": manifest.to_dict()},
                indent=2,
                default=str,
            )
        )
        return
    console().print(f"wrote {package.folder}: {_summary(config, package.manifest.dp)}")


@package_app.command("verify")
def package_verify(
    folder: Annotated[Path, typer.Argument(help="A learnware folder.")],
    pub: Annotated[
        Path | None, typer.Option("--pub", help="Contributor's public key: checks the signature.")
    ] = None,
) -> None:
    """Check a learnware folder: files, hashes, manifest and (with --pub) its signature."""
    from shared import signing
    from shared.learnware import verify_package

    key = signing.load_public_key(pub) if pub is not None else None
    verified = verify_package(folder, key)
    manifest = verified.manifest
    who = (
        f"signed by key {verified.signer_key_id}"
        if verified.signature_verified
        else "hashes ok, signature NOT checked (pass --pub; the manifest names key "
        f"{manifest.contributor.key_id})"
    )
    console().print(f"ok: {manifest.name} ({manifest.domain}/{manifest.task}), {who}")


def _card(
    name: str, domain: str, task: str, description: str, license: str, contributor: str
) -> LearnwareCard:
    from client.publish import LearnwareCard

    return LearnwareCard(name, domain, task, description, license, contributor)


def _spec_settings(spec: str, epsilon: float) -> SpecSettings:
    """``--spec rkme,pave`` and ``--spec-epsilon`` as the settings they name."""
    from client.publish import SpecSettings

    return SpecSettings(tuple(k.strip() for k in spec.split(",") if k.strip()), epsilon)


def _summary(config: ContributeConfig, dp: DpLedger) -> str:
    parts = ", ".join(f"{p.what} epsilon {epsilon_text(p.epsilon)}" for p in dp.parts)
    total = f"total epsilon {epsilon_text(dp.total.epsilon)}"
    total += f" (delta {config.delta:g}, {dp.total.accountant})"
    return f"{config.learnware.name}: {parts}; {total}"

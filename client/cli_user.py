"""``lwm search``, ``lwm fetch``, ``lwm generate``, ``lwm evaluate``, ``lwm trust``: the
user's commands (``lwm privacy``, the user's privacy ledgers, is in ``client.cli_privacy``).

Attached by ``client.cli`` (``register``). Commands parse options, call ``client.user`` and
print; every ``LwmError`` becomes one line on stderr and its exit code in ``client.cli.main``.
Results go to stdout (a table, or JSON with ``--json``); warnings and progress to stderr.
Heavy imports happen inside the commands so ``lwm --help`` stays instant.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from client.cli_privacy import BudgetEpsilonOpt
from shared.cli_options import (
    DATA_HELP,
    CaOpt,
    CertKeyOpt,
    CertOpt,
    DeviceOpt,
    DtypeOpt,
    HomeOpt,
    InsecureOpt,
    JsonOpt,
    KeyOpt,
    PromptColumnOpt,
    ResponseColumnOpt,
    ServerOpt,
    SplitOpt,
    TextColumnOpt,
    console,
    count_option,
    epsilon_text,
)

if TYPE_CHECKING:
    from client.evaluate import LearnwareEvaluation
    from client.market import Connection, MarketClient
    from client.user import SearchOutcome
    from shared.spec.confidence import Confidence

OptServerOpt = Annotated[
    str | None, typer.Option("--server", help="Market address HOST:PORT (to fetch an ID).")
]
OptKeyOpt = Annotated[Path | None, typer.Option("--key", help="Your Ed25519 private key (PEM).")]
BaseModelOpt = Annotated[
    str | None,
    typer.Option("--base-model", help="Your copy of the base model (name or HF folder)."),
]
RevokedOpt = Annotated[
    Path | None,
    typer.Option("--revoked-keys", help="File of revoked contributor key ids, one a line."),
]
TrustOpt = Annotated[
    Path | None,
    typer.Option("--trust", help="Your trust store of pinned keys (default: HOME/trust.json)."),
]
RequirePinnedOpt = Annotated[
    bool,
    typer.Option("--require-pinned", help="Refuse keys not pinned yet (no trust on first use)."),
]
trust_app = typer.Typer(
    help="Contributor keys you trust: your pins and those pinned on first use.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the user's commands to the ``lwm`` app."""
    app.command("search")(search)
    app.command("fetch")(fetch)
    app.command("generate")(generate)
    app.command("evaluate")(evaluate)
    app.add_typer(trust_app, name="trust")
    trust_app.command("add")(trust_add)
    trust_app.command("list")(trust_list)
    trust_app.command("remove")(trust_remove)


def connection(
    server: str,
    key: Path | None,
    ca: Path | None,
    insecure: bool,
    cert: Path | None,
    cert_key: Path | None,
) -> Connection:
    """The market connection every client command builds from its flags (one rule for
    --ca/--insecure, one warning)."""
    from client.market import Connection
    from shared.errors import InvalidInput

    if ca is not None and insecure:
        raise InvalidInput("--ca and --insecure exclude each other")
    if insecure:
        print_warning("--insecure: no TLS, everything on the wire is readable (loopback only)")
    return Connection(server, key, ca, insecure, cert, cert_key)


def market_client(
    server: str,
    key: Path,
    ca: Path | None,
    insecure: bool,
    cert: Path | None,
    cert_key: Path | None,
) -> MarketClient:
    """A ``MarketClient`` on ``connection``'s rules, for commands that only call the market."""
    from client.market import MarketClient

    return MarketClient(connection(server, key, ca, insecure, cert, cert_key))


def print_warning(text: str) -> None:
    console(stderr=True).print(f"[bold yellow]warning:[/] {text}")


def resolve_home(home: str | None) -> Any:
    from shared.home import Home

    return Home.resolve(home)


def trust_store(home: str | None, path: Path | None, require_pinned: bool = False) -> Any:
    from client.trust import TrustStore

    return TrustStore.at(resolve_home(home), path, require_pinned=require_pinned)


def revoked_ids(path: Path | None) -> frozenset[str]:
    from client.trust import read_revoked_keys

    return frozenset() if path is None else read_revoked_keys(path)


def search(
    data: Annotated[Path, typer.Argument(help=f"Your data: {DATA_HELP}")],
    server: ServerOpt,
    key: KeyOpt,
    top_k: Annotated[int, count_option("--top-k", "How many matches.")] = 5,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task.")] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="rkme, pave, or rkme+pave: both specs, ranked together by the market "
            "(two releases on your data's budget); default: the market's.",
        ),
    ] = None,
    epsilon: Annotated[float, typer.Option("--epsilon", help="DP epsilon of the spec.")] = 4.0,
    delta: Annotated[float, typer.Option("--delta", help="DP delta of the spec.")] = 1e-5,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Send a NON-private spec.")] = False,
    budget_epsilon: BudgetEpsilonOpt = None,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    as_json: JsonOpt = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    home: HomeOpt = None,
) -> None:
    """Find learnwares for DATA: a DP spec of it is made here; only the spec is sent."""
    from client.user import private_search
    from shared.data import DataSource

    conn = connection(server, key, ca, insecure, cert, cert_key)
    if no_dp:
        print_warning("--no-dp: the spec is NOT differentially private")
    outcome = private_search(
        DataSource(data, split, text_column, prompt_column, response_column),
        conn,
        kind=kind,
        epsilon=epsilon,
        no_dp=no_dp,
        top_k=top_k,
        delta=delta,
        home=resolve_home(home),
        progress=not as_json,
        budget_epsilon=budget_epsilon,
        domain=domain,
        task=task,
    )
    if as_json:
        print(json.dumps(search_json(outcome), indent=2))
    else:
        print_matches(outcome)
        if outcome.ledger is not None:
            print(f"privacy budget: {outcome.ledger.describe()}")


def search_json(outcome: SearchOutcome) -> dict[str, Any]:
    head = ("kind", "schema_id", "epsilon", "delta", "n_texts")
    seconds = (outcome.spec_seconds, outcome.network_seconds, outcome.total_seconds)
    return {
        **{name: getattr(outcome, name) for name in head},
        "timing": dict(zip(("spec_s", "network_s", "total_s"), seconds, strict=True)),
        "results": [asdict(m) for m in outcome.matches],
        "confidence": None if outcome.confidence is None else asdict(outcome.confidence),
        "privacy_ledger": None if outcome.ledger is None else outcome.ledger.summary(),
    }


def print_matches(outcome: SearchOutcome) -> None:
    from rich.table import Table

    eps = "no DP" if outcome.epsilon is None else f"epsilon {outcome.epsilon:g}"
    table = Table(
        title=f"{outcome.kind} search: {outcome.n_texts} texts, {eps}",
        caption=f"spec {outcome.spec_seconds:.2f} s here, market {outcome.network_seconds:.2f} s",
    )
    columns = ("rank", "id", "name", "v", "domain", "contributor", "base model", "licence")
    for column in (*columns, "epsilon", "score", "status"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for m in outcome.matches:
        table.add_row(
            str(m.rank),
            m.id,
            m.name,
            str(m.version),
            m.domain,
            m.contributor,
            m.base_model_id,
            m.license,
            epsilon_text(m.total_epsilon),
            f"{m.score:.4f}",
            m.status,
        )
    shown = table if outcome.matches else "no learnware matches (check the filters)"
    console(width=max(console().width, 160)).print(shown)
    if outcome.confidence is not None:
        print(confidence_text(outcome.confidence))


def confidence_text(found: Confidence) -> str:
    """One line on how sure the market is of the first match."""
    return (
        f"first match right with probability {found.probability:.0%} (margin to the second "
        f"{found.margin:.2f} spreads of the candidates' distances; {found.method} calibration)"
    )


def fetch(
    learnware_id: Annotated[str, typer.Argument(metavar="ID", help="The learnware's id.")],
    out: Annotated[Path, typer.Option("--out", help="New folder for the verified learnware.")],
    server: ServerOpt,
    key: KeyOpt,
    base_model: BaseModelOpt = None,
    revoked_keys: RevokedOpt = None,
    trust: TrustOpt = None,
    require_pinned: RequirePinnedOpt = False,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    cert: CertOpt = None,
    cert_key: CertKeyOpt = None,
    peft_dir: Annotated[
        Path | None,
        typer.Option("--peft-dir", help="Also write a folder plain peft loads (new folder)."),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Download ID (resumable), verify hash, signature, trusted key and base model, unpack
    into --out."""
    from client.trust import shown_name
    from client.user import fetch_learnware
    from shared.files import check_writable

    if peft_dir is not None:
        check_writable(peft_dir, parents=True)  # before the market is asked anything
    conn = connection(server, key, ca, insecure, cert, cert_key)
    fetched = fetch_learnware(
        conn,
        learnware_id,
        out,
        home=resolve_home(home),
        base_model=base_model,
        revoked_keys=revoked_ids(revoked_keys),
        trust=trust_store(home, trust, require_pinned),
    )
    m = fetched.manifest
    self_named = ""
    if m.contributor.name != fetched.signer.name:
        self_named = f" (its manifest says {shown_name(m.contributor.name)})"
    print(
        f"fetched {fetched.id} ({m.name}, {m.domain}) into {fetched.path}\n"
        f"  sha256 {fetched.package_sha256[:16]}… ({fetched.package_size} bytes) ok; "
        f"signature of {fetched.signer.describe()} ok{self_named}\n"
        f"  base model {m.base_model.model_id} ({m.base_model.sha256[:12]}) "
        f"present here as {fetched.base_model.name}"
    )
    if peft_dir is not None:
        from client.run import write_peft_folder

        written = write_peft_folder(fetched, peft_dir, resolve_home(home))
        print(f"  plain peft folder {written}: AutoPeftModelForCausalLM.from_pretrained loads it")


def _load(
    source: str,
    home: str | None,
    base_model: str | None,
    server: str | None,
    key: Path | None,
    ca: Path | None,
    insecure: bool,
    revoked_keys: Path | None,
    trust: Path | None,
    device: str,
    dtype: str | None,
) -> Any:
    """The learnware loaded on ``--device``/``--dtype``, which are checked first."""
    from client.run import load_learnware
    from shared.models.device import resolve

    placement = resolve(device, dtype)
    conn = None if server is None else connection(server, key, ca, insecure, None, None)
    return load_learnware(
        source,
        home=resolve_home(home),
        base_model=base_model,
        conn=conn,
        revoked_keys=revoked_ids(revoked_keys),
        trust=trust_store(home, trust),
        placement=placement,
    )


def generate(
    source: Annotated[str, typer.Argument(metavar="ID|DIR", help="Learnware folder or id.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Your message, or text to continue.")],
    max_new_tokens: Annotated[int, count_option("--max-new-tokens")] = 32,
    no_chat: Annotated[
        bool, typer.Option("--no-chat", help="Plain text, not the model's chat template.")
    ] = False,
    temperature: Annotated[
        float, typer.Option("--temperature", help="0: greedy (default); above: sample.")
    ] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus mass, in (0, 1].")] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Only the k likeliest.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the sampling.")] = None,
    base_model: BaseModelOpt = None,
    server: OptServerOpt = None,
    key: OptKeyOpt = None,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    revoked_keys: RevokedOpt = None,
    trust: TrustOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run the learnware (base model + adapter) on --prompt, through the model's chat template
    when it has one; prints the new text. Greedy unless --temperature is above 0."""
    from client.run import Sampling, has_chat_template
    from client.run import generate as run

    sampling = Sampling(temperature, top_p, top_k, seed)  # bad values fail before any load
    learnware = _load(
        source, home, base_model, server, key, ca, insecure, revoked_keys, trust, device, dtype
    )
    if not no_chat and not has_chat_template(learnware.tokenizer):
        print_warning(
            "this model's tokenizer has no chat template: the prompt goes in as plain text"
        )
    print(run(learnware, prompt, max_new_tokens, sampling=sampling, chat=not no_chat).text)


def evaluate(
    source: Annotated[str, typer.Argument(metavar="ID|DIR", help="Learnware folder or id.")],
    data: Annotated[
        Path | None, typer.Argument(help=f"Text or prompt/response pairs: {DATA_HELP}")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="lm-eval tasks T1,T2: names, YAML files or data files."),
    ] = None,
    with_base: Annotated[
        bool, typer.Option("--with-base", help="Also score the base model alone.")
    ] = False,
    batch_size: Annotated[int, count_option("--batch-size")] = 16,
    base_model: BaseModelOpt = None,
    server: OptServerOpt = None,
    key: OptKeyOpt = None,
    ca: CaOpt = None,
    insecure: InsecureOpt = False,
    revoked_keys: RevokedOpt = None,
    trust: TrustOpt = None,
    as_json: JsonOpt = False,
    split: SplitOpt = None,
    text_column: TextColumnOpt = None,
    prompt_column: PromptColumnOpt = None,
    response_column: ResponseColumnOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    home: HomeOpt = None,
) -> None:
    """Score the learnware on DATA here: perplexity on text, accuracy on labelled data; with
    --tasks, run lm-evaluation-harness tasks (DATA too) on it and on its base model."""
    from client.evaluate import evaluate as run
    from shared.data import DataSource, load_dataset
    from shared.errors import InvalidInput

    def load() -> Any:
        return _load(
            source, home, base_model, server, key, ca, insecure, revoked_keys, trust, device, dtype
        )

    chosen = DataSource(data or Path(), split, text_column, prompt_column, response_column)
    if tasks is not None:
        from client.cli_harness import evaluate_tasks
        from client.harness import split_tasks

        names = [*split_tasks(tasks), *([str(data.absolute())] if data else [])]
        evaluate_tasks(load, names, chosen, batch_size=batch_size, as_json=as_json)
        return
    if data is None:
        raise InvalidInput("give DATA to score, or --tasks (lm-eval tasks or data files)")
    dataset = load_dataset(chosen)  # bad data fails before any model loads
    learnware = load()
    result = run(
        learnware,
        list(dataset.records),
        with_base=with_base,
        batch_size=batch_size,
        progress=not as_json,
    )
    if as_json:
        payload = {"learnware": str(learnware.path), "name": learnware.manifest.name}
        payload |= {"result": result.learnware.to_dict()}
        payload |= {"base": result.base.to_dict() if result.base else None}
        print(json.dumps(payload, indent=2))
    else:
        _print_evaluation(learnware.manifest.name, result)


def _print_evaluation(name: str, result: LearnwareEvaluation) -> None:
    rows = [(name, result.learnware)]
    if result.base is not None:
        rows.append(("base model", result.base))
    for label, e in rows:
        line = f"{label}: perplexity {e.perplexity:.3f} over {e.n_tokens} tokens"
        if e.kind == "labelled":
            line = f"{label}: response perplexity {e.perplexity:.3f}"
            if e.accuracy is not None:
                line += f", accuracy {e.accuracy:.3f} (norm {e.accuracy_norm:.3f})"
                line += f" over {e.n_labels} labels"
        print(f"{line}; {e.n_records} records, {e.seconds:.1f} s")


# ---------------------------------------------------------------- lwm trust


def trust_add(
    pub: Annotated[Path, typer.Argument(help="The contributor's public key file (PEM or raw).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Who it is (default: the file's stem).")
    ] = None,
    trust: TrustOpt = None,
    home: HomeOpt = None,
) -> None:
    """Pin a contributor key you checked yourself: trusted at every market and for folders."""
    from client.trust import shown_name

    pin = trust_store(home, trust).add(pub, name or pub.stem)
    print(f"pinned key {pin.key_id} as {shown_name(pin.name)}")


def trust_list(
    trust: TrustOpt = None, as_json: JsonOpt = False, home: HomeOpt = None
) -> None:
    """Every pinned key: yours, and those pinned on first use at a market."""
    from client.trust import shown_name

    pins = trust_store(home, trust).pins()
    if as_json:
        print(json.dumps([asdict(p) for p in pins], indent=2))
        return
    if not pins:
        print("no pinned keys")
    for pin in pins:
        where = "yours" if pin.market is None else f"first use at {pin.market}"
        print(f"{pin.key_id}  {shown_name(pin.name)}  ({where}, {pin.added_at})")


def trust_remove(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key id to forget.")],
    trust: TrustOpt = None,
    home: HomeOpt = None,
) -> None:
    """Forget every pin of KEY_ID (yours and first-use ones)."""
    removed = trust_store(home, trust).remove(key_id)
    print(f"removed {removed} pin(s) of key {key_id}")

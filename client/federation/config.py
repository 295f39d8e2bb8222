"""``FederationConfig``: what ``lwm federate --config FED.toml`` reads, validated up front.

Example::

    base_model = "tiny"            # or smollm2-135m or a local HF folder
    rounds = 2
    local_steps = 5
    batch_size = 8
    max_tokens = 64
    # lr, optimizer = "auto", seed = 0: as ``lwm contribute``'s (defaults shown)
    min_holders = 2                # a round (and the merged spec) needs at least this many
                                   # holders; one that fails is left out. Default: all of them
    device = "auto"                # where each holder trains: auto (its cuda, else mps, else
    dtype = "float32"              # cpu), cpu, cuda or mps; dtype float32|bfloat16|float16
    # home = "/path/to/lwm-home"  (default $LWM_HOME or ~/.cache/lwm)

    [learnware]
    name = "region-news"
    domain = "finance"
    task = "text-generation"
    description = "Federated LoRA over two banks' news."
    license = "MIT"

    [lora]
    rank = 8
    alpha = 16
    target_modules = ["q_proj", "v_proj"]

    [dp]
    delta = 1e-5
    train_epsilon = 8.0            # DP-SGD per holder over all rounds; omit for no DP
    # clip_norm = 0.5              (DP-SGD's per-sample clip)

    [spec]
    kinds = ["rkme"]               # or ["rkme", "pave"]: one DP spec of each, composed
    epsilon = 4.0

    [market]                       # omit address (and set out) to only write the package
    address = "localhost:7443"
    ca = "ca.pem"                  # or insecure = true
    key = "coordinator.key"        # signs the package and the submission
    # out = "federated-learnware"  (write the signed package here instead of submitting)

    [[holders]]                    # holder K is the SuperNode started with partition-id=K
    name = "bank-a"
    data = "bank_a.jsonl"

    [[holders]]
    name = "bank-b"
    data = "bank_b_saved"          # any format ``lwm data inspect`` reads; optional keys
    split = "train"                # split, text_column, prompt_column, response_column

Relative paths are read from the TOML file's folder. Which files must exist depends on the
machine reading it (``machine``): on one machine (simulation) all of them; on a
deployment's coordinator only ``market.key``; on holder K's SuperNode only holder K's data.
"""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.finetune import FinetuneConfig
from client.publish import LearnwareCard, SpecSettings
from client.toml_file import read_toml
from shared.data.columns import DataSource
from shared.errors import InvalidInput, LwmError
from shared.models.device import Placement, parse, resolve
from shared.privacy import DEFAULT_DELTA

HOLDER_DATA_KEYS = ("split", "text_column", "prompt_column", "response_column")
TOP_KEYS = {
    "base_model", "rounds", "local_steps", "batch_size", "max_tokens", "lr", "optimizer",
    "seed", "home", "min_holders", "learnware", "lora", "dp", "spec", "market", "holders",
    "device", "dtype",
}  # fmt: skip
ALL_HERE = "all"  # one machine holds everything: the simulation engine
COORDINATOR = "coordinator"  # the ServerApp's machine in a deployment: needs the key only
Machine = str | int  # ALL_HERE, COORDINATOR or a holder's index (its SuperNode)


@dataclass(frozen=True)
class Holder:
    """One data holder: a name (a Flower SuperNode) and its texts: the path of its data
    file (FED.toml; a ``DataSource`` where it names a split or columns), or the texts
    themselves where one machine runs every holder (the simulation engine ships them to its
    workers inside the config; no file needed)."""

    name: str
    data: Path | DataSource | tuple[str, ...]


@dataclass(frozen=True)
class MarketSettings:
    """``[market]``: the coordinator's key (signs the package and the calls) and where the
    learnware goes: submitted to ``address`` (TLS with ``ca``, or ``insecure``) or, without
    an address, written to ``out``."""

    key: Path
    address: str | None = None
    ca: Path | None = None
    insecure: bool = False
    out: Path | None = None

    def __post_init__(self) -> None:
        if self.address is None and self.out is None:
            raise InvalidInput("set market.address to submit, or market.out to write the package")
        if self.address is not None and self.ca is None and not self.insecure:
            raise InvalidInput("market.ca is needed to reach the market over TLS (or insecure)")


def _local_training() -> FinetuneConfig:
    return FinetuneConfig(steps=5, max_tokens=64)


@dataclass(frozen=True)
class FederationConfig:
    """Everything a federation needs, in FED.toml's sections; ``__post_init__`` refuses what
    cannot work.

    ``training`` is one holder's local training of one round (``steps`` is FED.toml's
    ``local_steps``; ``dp_epsilon`` None trains the adapter without DP, otherwise each
    holder runs DP-SGD with its accountant carried over all rounds). ``spec`` holds the
    spec kinds and their epsilon (always DP); ``delta`` applies to every release and
    overrides ``training.delta``. ``min_holders`` (None: all) is the quorum: a round, and
    the merged spec, go on without holders that fail as long as this many answer.
    ``device`` and ``dtype`` say where each holder trains (``placement``, resolved on the
    holder's own machine; its spec share is float32 on that device).

    ``machine`` (not stored) says which files must exist here (see the module docstring).
    """

    holders: tuple[Holder, ...]
    learnware: LearnwareCard
    market: MarketSettings
    training: FinetuneConfig = field(default_factory=_local_training)
    spec: SpecSettings = field(default_factory=SpecSettings)
    base_model: str = "tiny"
    rounds: int = 2
    delta: float = DEFAULT_DELTA
    home: Path | None = None
    min_holders: int | None = None
    device: str = "auto"
    dtype: str | None = None
    machine: InitVar[Machine] = ALL_HERE

    def __post_init__(self, machine: Machine) -> None:
        if isinstance(self.holders, list):
            object.__setattr__(self, "holders", tuple(self.holders))
        if len(self.holders) < 2:
            raise InvalidInput(f"a federation needs at least 2 holders, got {len(self.holders)}")
        names = [h.name for h in self.holders]
        if len(set(names)) != len(names) or not all(names):
            raise InvalidInput(f"holder names must be non-empty and distinct, got {names}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise InvalidInput(f"rounds must be an int >= 1, got {self.rounds!r}")
        self._check_min_holders()
        parse(self.device, self.dtype)  # names only: the hardware is the holder's
        self._check_files(machine)
        self.spec.budget(self.delta)  # PrivacyError for a bad delta
        object.__setattr__(self, "training", _with_delta(self.training, self.delta))

    def _check_min_holders(self) -> None:
        value, n = self.min_holders, len(self.holders)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= n:
            raise InvalidInput(
                f"min_holders must be an int from 2 to the number of holders ({n}), got {value!r}"
            )

    def _check_files(self, machine: Machine) -> None:
        """Refuse, before any training, a data file or key this machine needs and lacks."""
        if machine == ALL_HERE:
            holders = list(self.holders)
        elif machine == COORDINATOR:
            holders = []
        elif isinstance(machine, int) and not isinstance(machine, bool):
            if not 0 <= machine < len(self.holders):
                raise InvalidInput(
                    f"partition-id {machine} names no holder: the config has "
                    f"{len(self.holders)} (0 to {len(self.holders) - 1})"
                )
            holders = [self.holders[machine]]
        else:
            raise InvalidInput(f"machine must be {ALL_HERE!r}, {COORDINATOR!r} or a holder index")
        for h in holders:
            data = h.data.path if isinstance(h.data, DataSource) else h.data
            if isinstance(data, Path) and not data.exists():
                raise InvalidInput(f"holder {h.name!r}: data {data} does not exist")
        if machine in (ALL_HERE, COORDINATOR) and not self.market.key.is_file():
            raise InvalidInput(f"market.key: the coordinator key {self.market.key} does not exist")

    def placement(self) -> Placement:
        """Where this machine's holder trains (``ModelUnavailable`` if it lacks the device)."""
        return resolve(self.device, self.dtype)

    @property
    def quorum(self) -> int:
        """How many holders must answer each round and the spec query (min_holders)."""
        return len(self.holders) if self.min_holders is None else self.min_holders

    @property
    def local_steps(self) -> int:
        return self.training.steps

    @property
    def total_steps(self) -> int:
        """Every holder's training steps over the whole run: its DP-SGD budget's horizon."""
        return self.rounds * self.training.steps

    def check_holder_fits(self, n: int) -> None:
        """Refuse, before any model loads, a holder of ``n`` texts whose releases cannot hold:
        delta must be below 1/n for its spec and its DP-SGD, whose noise over the whole run
        is calibrated now. (The RKME text minimum applies to the merged spec, whose count is
        the holders' sum; the market checks it.)"""
        self.spec.budget(self.delta).require_texts(n)
        self.training.check_fits(n, self.total_steps)

    def to_dict(self) -> dict[str, Any]:
        """The FED.toml table ``from_dict`` reads back into this config, paths absolute.

        Every holder's data must be a file (a path or a ``DataSource``): texts held in
        memory have no FED.toml form (``client.federation.run`` writes them to files first).
        """
        t, m = self.training, self.market
        raw: dict[str, Any] = {
            "base_model": self.base_model,
            "rounds": self.rounds,
            "local_steps": t.steps,
            "batch_size": t.batch_size,
            "max_tokens": t.max_tokens,
            "optimizer": t.optimizer,
            "seed": t.seed,
            **_present({"lr": t.lr, "min_holders": self.min_holders}),
            **_present({"home": _text(self.home)}),
            "device": self.device,
            **_present({"dtype": self.dtype}),
            "learnware": asdict(self.learnware),
            "lora": {"rank": t.rank, "alpha": t.alpha, "target_modules": list(t.target_modules)},
            "dp": {
                "delta": self.delta,
                "clip_norm": t.clip_norm,
                **_present({"train_epsilon": t.dp_epsilon}),
            },
            "spec": {"kinds": list(self.spec.kinds), "epsilon": self.spec.epsilon},
            "market": {
                "key": _text(m.key),
                "insecure": m.insecure,
                **_present({"address": m.address, "ca": _text(m.ca), "out": _text(m.out)}),
            },
            "holders": [_holder_table(h) for h in self.holders],
        }
        return raw

    @classmethod
    def from_toml(cls, path: str | Path, machine: Machine = ALL_HERE) -> FederationConfig:
        """Read and validate ``FED.toml``; any problem is one ``InvalidInput`` line."""
        file = Path(path)
        return cls.from_dict(read_toml(file), file.parent, machine)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], root: Path, machine: Machine = ALL_HERE
    ) -> FederationConfig:
        unknown = set(raw) - TOP_KEYS
        if unknown:
            raise InvalidInput(f"unknown settings in the federation config: {sorted(unknown)}")

        def table(name: str) -> dict[str, Any]:
            value = raw.get(name, {})
            if not isinstance(value, dict):
                raise InvalidInput(f"[{name}] must be a table")
            return value

        def path(value: Any, what: str) -> Path:
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"{what} must be a path, got {value!r}")
            p = Path(value).expanduser()
            return p if p.is_absolute() else root / p

        lw, lora, dp, spec, market = (
            table(n) for n in ("learnware", "lora", "dp", "spec", "market")
        )
        holders = _holders(raw.get("holders", []), path)
        for required in ("name", "domain", "task", "license"):
            if required not in lw:
                raise InvalidInput(f"[learnware] needs {required}")
        if "key" not in market:
            raise InvalidInput("[market] needs key (the coordinator's private key)")
        delta = dp.get("delta", DEFAULT_DELTA)
        try:
            return cls(
                holders=holders,
                learnware=LearnwareCard(
                    name=lw["name"],
                    domain=lw["domain"],
                    task=lw["task"],
                    description=lw.get("description", ""),
                    license=lw["license"],
                    contributor=lw.get("contributor", "coordinator"),
                ),
                market=MarketSettings(
                    key=path(market["key"], "market.key"),
                    address=market.get("address"),
                    ca=path(market["ca"], "market.ca") if "ca" in market else None,
                    insecure=bool(market.get("insecure", False)),
                    out=path(market["out"], "market.out") if "out" in market else None,
                ),
                training=_training(raw, lora, dp, delta),
                spec=SpecSettings(_kinds(spec), spec.get("epsilon", 4.0)),
                base_model=raw.get("base_model", "tiny"),
                rounds=raw.get("rounds", 2),
                delta=delta,
                home=path(raw["home"], "home") if "home" in raw else None,
                min_holders=raw.get("min_holders"),
                device=raw.get("device", "auto"),
                dtype=raw.get("dtype"),
                machine=machine,
            )
        except LwmError:
            raise
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"bad federation config: {err}") from err


def _with_delta(training: FinetuneConfig, delta: float) -> FinetuneConfig:
    from dataclasses import replace

    if not isinstance(training, FinetuneConfig):
        raise InvalidInput(f"training must be a FinetuneConfig, got {training!r}")
    return replace(training, delta=delta)


def _holders(raw: Any, path: Any) -> tuple[Holder, ...]:
    if not isinstance(raw, list):
        raise InvalidInput("[[holders]] must be a list of tables with name and data")
    holders = []
    for i, h in enumerate(raw):
        if not isinstance(h, dict) or "name" not in h or "data" not in h:
            raise InvalidInput(f"holder #{i + 1} needs a name and a data path")
        data = path(h["data"], f"holders[{i}].data")
        choices = {k: h[k] for k in HOLDER_DATA_KEYS if k in h}
        for key, value in choices.items():
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"holders[{i}].{key} must be a name, got {value!r}")
        holders.append(Holder(str(h["name"]), DataSource(data, **choices) if choices else data))
    return tuple(holders)


def _text(path: Path | None) -> str | None:
    """A path as FED.toml holds it: absolute, since the file may be read from elsewhere."""
    return None if path is None else str(path.absolute())


def _holder_table(holder: Holder) -> dict[str, Any]:
    """``[[holders]]``' table of one holder whose data is a file (``to_dict``)."""
    data = holder.data
    if isinstance(data, Path):
        return {"name": holder.name, "data": _text(data)}
    if not isinstance(data, DataSource):
        raise InvalidInput(f"holder {holder.name!r}: texts in memory have no FED.toml form")
    choices = {k: getattr(data, k) for k in HOLDER_DATA_KEYS}
    return {"name": holder.name, "data": _text(data.path), **_present(choices)}


def _training(
    raw: dict[str, Any], lora: dict[str, Any], dp: dict[str, Any], delta: float
) -> FinetuneConfig:
    """One holder's local training of one round: top-level numbers, ``[lora]`` and ``[dp]``."""
    return FinetuneConfig(
        rank=lora.get("rank", 8),
        alpha=lora.get("alpha", 16),
        target_modules=tuple(lora.get("target_modules", ("q_proj", "v_proj"))),
        steps=raw.get("local_steps", 5),
        batch_size=raw.get("batch_size", 8),
        lr=raw.get("lr"),
        max_tokens=raw.get("max_tokens", 64),
        dp_epsilon=dp.get("train_epsilon"),
        delta=delta,
        **_present({"clip_norm": dp.get("clip_norm")}),
        **_present({k: raw.get(k) for k in ("optimizer", "seed")}),
    )


def _present(values: dict[str, Any]) -> dict[str, Any]:
    """The settings a file names; the ones it leaves out keep the dataclass's default."""
    return {k: v for k, v in values.items() if v is not None}


def _kinds(spec: dict[str, Any]) -> tuple[str, ...]:
    """``[spec] kinds = [...]``, or the single ``kind = "..."`` of older files."""
    if "kinds" in spec and "kind" in spec:
        raise InvalidInput('[spec] takes kinds = [...] or kind = "...", not both')
    kinds = spec.get("kinds", [spec.get("kind", "rkme")])
    if isinstance(kinds, str) or not isinstance(kinds, list):
        raise InvalidInput(f"[spec] kinds must be a list of kinds, got {kinds!r}")
    return tuple(kinds)

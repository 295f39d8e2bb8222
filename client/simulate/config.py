"""``SimulationConfig``: the whole simulated market of ``lwm simulate`` in one validated record.

A config is a TOML file; the three profiles (``quick``, ``default``, ``full``) are embedded
files in ``client/simulate/profiles`` and show every setting. A user's file may start from a
profile (``profile = "quick"``) and override any top-level value or table; its
``[[contributors]]`` and ``[[tasks]]`` lists, when given, replace the profile's (new
contributors drop the profile's tasks, whose ``right`` names the profile's contributors).

Contributors are data holders: one holder builds a learnware alone, several (``holders > 1``)
build one together as a Flower federation. Each holder draws its own disjoint slice of the
real corpora named in ``sources`` and, when ``tasks`` are named, its own slice of those
prompt/answer tasks' records. Users are derived: one per contributor with held-out text of
its sources (the right learnware is that contributor's), and one per ``[[tasks]]`` entry with
held-out records of that task (``right`` lists the contributors whose learnware counts as a
correct pick).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput, LwmError
from shared.spec.schema import KINDS

PROFILES = ("quick", "default", "full")


@dataclass(frozen=True)
class Training:
    """LoRA training of one solo learnware (``lr`` None: the optimizer's default)."""

    steps: int = 20
    batch_size: int = 8
    max_tokens: int = 64
    lr: float | None = None
    rank: int = 8
    train_epsilon: float | None = None  # DP-SGD for every adapter; None trains without DP


@dataclass(frozen=True)
class Federation:
    """How a multi-holder contributor trains: FedAvg rounds of local steps per holder."""

    rounds: int = 2
    local_steps: int = 10


@dataclass(frozen=True)
class Users:
    """Per user: ``texts`` held-out texts (or ``task_records`` records) make the DP spec;
    the first ``eval_records`` of them, cut to ``eval_words`` words (a text's first words, a
    prompt's last), are what every contender is scored on: every model scores every user, so
    this sets the cost of the whole evaluation. Closed tasks with at most ``max_labels``
    labels are scored for accuracy too (one pass per label)."""

    texts: int = 100
    task_records: int = 100
    eval_records: int = 24
    eval_words: int = 48
    max_labels: int = 8


@dataclass(frozen=True)
class Contributor:
    """One learnware's maker: ``holders`` data holders sharing ``sources`` and ``tasks``."""

    name: str
    sources: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    holders: int = 1
    texts: int = 200  # per holder
    task_records: int = 60  # per holder and task

    @property
    def domain(self) -> str:
        """The learnware's domain field: the corpus group (``medicine``, ``law``, ...)."""
        groups = {source.split("/")[0] for source in self.sources}
        return groups.pop() if len(groups) == 1 else "mixed"

    @property
    def federated(self) -> bool:
        return self.holders > 1


@dataclass(frozen=True)
class TaskUsers:
    """A prompt/answer task whose held-out records one user brings to the market."""

    name: str
    right: tuple[str, ...]


@dataclass(frozen=True)
class SimulationConfig:
    contributors: tuple[Contributor, ...]
    tasks: tuple[TaskUsers, ...] = ()
    profile: str = "custom"
    base_model: str = "tiny"
    seed: int = 0
    spec_kinds: tuple[str, ...] = ("rkme", "pave")
    spec_epsilon: float = 4.0
    user_epsilon: float = 4.0
    sweep_epsilons: tuple[float, ...] = (1.0, 4.0)
    smoke: bool = True
    training: Training = field(default_factory=Training)
    federation: Federation = field(default_factory=Federation)
    users: Users = field(default_factory=Users)

    def __post_init__(self) -> None:
        if not self.contributors:
            raise InvalidInput("a simulation needs at least one contributor")
        names = [c.name for c in self.contributors]
        if len(set(names)) != len(names):
            raise InvalidInput(f"contributor names must be distinct, got {names}")
        if len(self.contributors) < 2:
            raise InvalidInput("a market needs at least 2 learnwares to choose from")
        for kind in self.spec_kinds:
            if kind not in KINDS:
                raise InvalidInput(f"unknown spec kind {kind!r}; use {', '.join(KINDS)}")
        if not self.spec_kinds:
            raise InvalidInput("spec_kinds must name at least one kind")
        for eps in (self.spec_epsilon, self.user_epsilon, *self.sweep_epsilons):
            if not isinstance(eps, int | float) or isinstance(eps, bool) or eps <= 0:
                raise InvalidInput(f"every epsilon must be a number > 0, got {eps!r}")
        for task in self.tasks:
            unknown = sorted(set(task.right) - set(names))
            if unknown:
                raise InvalidInput(f"task {task.name}: right names unknown contributors {unknown}")
        self._check_sources()
        for c in self.contributors:
            self._check_contributor(c)
        self._check_numbers()

    def _check_sources(self) -> None:
        from shared.data.corpora import list_domains, list_tasks

        domains = {d.name for d in list_domains()}
        tasks = {t.name for t in list_tasks()}
        for c in self.contributors:
            for source in c.sources:
                if source not in domains:
                    raise InvalidInput(f"{c.name}: unknown source {source!r}")
            for task in c.tasks:
                if task not in tasks:
                    raise InvalidInput(f"{c.name}: unknown task {task!r}")
        for t in self.tasks:
            if t.name not in tasks:
                raise InvalidInput(f"unknown task {t.name!r}; known: {', '.join(sorted(tasks))}")

    @staticmethod
    def _check_contributor(c: Contributor) -> None:
        from shared.learnware import _check as check

        check.slug("contributor name", c.name)
        if not c.sources:
            raise InvalidInput(f"{c.name}: sources must name at least one corpus")
        for name in ("holders", "texts", "task_records"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{c.name}: {name} must be an int >= 1, got {value!r}")

    def _check_numbers(self) -> None:
        for record in (self.training, self.federation, self.users):
            for f in fields(record):
                value = getattr(record, f.name)
                if f.name in ("lr", "train_epsilon") and value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise InvalidInput(f"{f.name} must be a number > 0, got {value!r}")
        if self.users.eval_records > min(self.users.texts, self.users.task_records):
            raise InvalidInput("users.eval_records cannot exceed users.texts or task_records")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------ reading

    @classmethod
    def profile_named(cls, name: str) -> SimulationConfig:
        return cls.from_dict(_profile_raw(name))

    @classmethod
    def from_toml(cls, path: str | Path, profile: str | None = None) -> SimulationConfig:
        """Read FILE.toml; it may name a ``profile`` to start from (``--profile`` wins)."""
        from client.settings import read_toml

        file = Path(path)
        raw = read_toml(file)
        start = profile or raw.pop("profile", None)
        if start is not None:
            base = _profile_raw(str(start))
            if "contributors" in raw:  # the profile's task users name the profile's holders
                base.pop("tasks", None)
            raw = {**base, **raw, "profile": f"{start}+{file.name}"}
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SimulationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown settings in the simulation config: {unknown}")
        try:
            values = dict(raw)
            values["contributors"] = tuple(
                _record(Contributor, c, "contributors") for c in raw.get("contributors", [])
            )
            values["tasks"] = tuple(_record(TaskUsers, t, "tasks") for t in raw.get("tasks", []))
            for name, kind in (
                ("training", Training),
                ("federation", Federation),
                ("users", Users),
            ):
                values[name] = _record(kind, raw.get(name, {}), name)
            for name in ("spec_kinds", "sweep_epsilons"):
                if name in values:
                    values[name] = tuple(values[name])
            return cls(**values)
        except LwmError:
            raise
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"bad simulation config: {err}") from err

    def with_overrides(self, **changes: Any) -> SimulationConfig:
        return replace(self, **changes)


def _record(kind: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise InvalidInput(f"[{where}] must be a table, got {raw!r}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(f"unknown settings in [{where}]: {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return kind(**values)


def _profile_raw(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise InvalidInput(f"unknown profile {name!r}; use {', '.join(PROFILES)}")
    text = resources.files("client.simulate").joinpath(f"profiles/{name}.toml").read_text()
    return {**tomllib.loads(text), "profile": name}

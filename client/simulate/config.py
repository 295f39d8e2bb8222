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

A consortium rehearses on its own data by naming files where a built-in name would go: a
source or a contributor's task may be a table ``{ path = "notes.jsonl", split = "train",
text_column = "note" }`` (any format ``shared.data.load_dataset`` reads: JSONL, JSON, CSV,
parquet, Arrow, a ``save_to_disk`` folder; the keys are ``DataSource``'s fields), and a
``[[tasks]]`` user may bring a file as ``data = { path = ... }`` (multiple-choice records are
scored for accuracy). Relative paths are read from the TOML file's folder. Every file is read
once when the config is loaded, so a missing file or column stops the run before any work.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from client.toml_file import read_toml
from shared.errors import InvalidInput, LwmError
from shared.spec.schema import KINDS

if TYPE_CHECKING:
    from shared.data.columns import DataSource

PROFILES = ("quick", "default", "full")
OWN_DOMAIN = "own"  # the domain of a contributor that names only its own files

# A built-in corpus or task by name, or a file of the consortium's (``shared.data`` is
# imported only when a config is read, so ``lwm --help`` stays instant).
Source: TypeAlias = "str | DataSource"


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
    labels, and multiple-choice records with at most that many choices, are scored for
    accuracy too (one pass per label).

    The local check before reuse (``client.reuse``) is simulated per user and spec kind: the
    market's top ``check_top_k`` and the base model (and their merge) are scored on the
    ``check_records`` records after the scored ones (never the scored ones themselves, so
    the check cannot see the figures it is judged by), and its pick is then scored with the
    other contenders.

    ``score_precision`` (``auto``, ``float32``, ``bfloat16``): what every score multiplies
    in; ``auto`` is bfloat16 autocast where the CPU does it natively (half the time,
    log-probabilities within 0.02%; ``shared.models.device.scoring_precision``)."""

    texts: int = 100
    task_records: int = 100
    eval_records: int = 24
    eval_words: int = 48
    max_labels: int = 8
    check_records: int = 12
    check_top_k: int = 3
    score_precision: str = "auto"

    def __post_init__(self) -> None:
        from shared.models.device import PRECISIONS

        if self.score_precision not in PRECISIONS:
            raise InvalidInput(
                f"users.score_precision must be one of {PRECISIONS}, got {self.score_precision!r}"
            )


@dataclass(frozen=True)
class Contributor:
    """One learnware's maker: ``holders`` data holders sharing ``sources`` and ``tasks``.

    ``domain`` is the learnware's domain field and its users' row in the report; left out,
    it is the corpus group (``medicine``, ``law``, ...), ``own`` for files only, ``mixed``
    for several."""

    name: str
    sources: tuple[Source, ...]
    tasks: tuple[Source, ...] = ()
    holders: int = 1
    texts: int = 200  # per holder
    task_records: int = 60  # per holder and task
    domain: str = ""
    # The cross-source setting (issue 16): this contributor's user draws its text from these
    # sources (the other side of a source pair in shared/data) instead of ``sources``.
    user_sources: tuple[Source, ...] = ()

    def __post_init__(self) -> None:
        if not self.domain:
            groups = {s.split("/")[0] if isinstance(s, str) else OWN_DOMAIN for s in self.sources}
            object.__setattr__(self, "domain", groups.pop() if len(groups) == 1 else "mixed")

    @property
    def federated(self) -> bool:
        return self.holders > 1


@dataclass(frozen=True)
class TaskUsers:
    """A task whose held-out records one user brings to the market: the built-in task
    ``name``, or the records of ``data`` (then ``name`` is the user's, and ``domain``, the
    report's row, defaults to that of the first contributor in ``right``)."""

    name: str
    right: tuple[str, ...]
    data: DataSource | None = None
    domain: str = ""


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
            if task.data is not None:
                _slug("a task user's name", task.name)
                if not (task.right or task.domain):
                    raise InvalidInput(f"task {task.name}: name its domain or a right contributor")
        self._check_sources()
        for c in self.contributors:
            self._check_contributor(c)
        self._check_numbers()
        self._check_privacy()

    def _check_sources(self) -> None:
        """Built-in names must exist; every file is read now (``DataError`` naming it)."""
        from shared.data import load_dataset
        from shared.data.corpora import list_domains, list_tasks

        domains = {d.name for d in list_domains()}
        tasks = {t.name for t in list_tasks()}
        files: list[DataSource] = []
        for c in self.contributors:
            for source in (*c.sources, *c.user_sources):
                if not isinstance(source, str):
                    files.append(source)
                elif source not in domains:
                    raise InvalidInput(f"{c.name}: unknown source {source!r}")
            for task in c.tasks:
                if not isinstance(task, str):
                    files.append(task)
                elif task not in tasks:
                    raise InvalidInput(f"{c.name}: unknown task {task!r}")
        for t in self.tasks:
            if t.data is not None:
                files.append(t.data)
            elif t.name not in tasks:
                raise InvalidInput(f"unknown task {t.name!r}; known: {', '.join(sorted(tasks))}")
        for file in dict.fromkeys(files):
            load_dataset(file)

    def task_domain(self, task: TaskUsers) -> str:
        """The report row of a task's user (see ``TaskUsers``)."""
        if task.domain:
            return task.domain
        if task.data is None:
            return task.name.split("/")[0]
        return next(c.domain for c in self.contributors if c.name == task.right[0])

    @staticmethod
    def _check_contributor(c: Contributor) -> None:
        _slug("contributor name", c.name)
        _slug(f"{c.name}: domain", c.domain)
        if not c.sources:
            raise InvalidInput(f"{c.name}: sources must name at least one corpus or file")
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
                if f.name == "score_precision":  # a name, checked by Users
                    continue
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise InvalidInput(f"{f.name} must be a number > 0, got {value!r}")
        if self.users.eval_records >= min(self.users.texts, self.users.task_records):
            raise InvalidInput(
                "users.eval_records must be below users.texts and task_records "
                "(the records after them are the local check's)"
            )

    def _check_privacy(self) -> None:
        """Each holder's texts must carry its specs at ``spec_epsilon`` (the rule
        ``lwm contribute`` applies), refused before any market starts. A federation's
        RKME minimum applies to its merged spec, so only delta is checked per holder."""
        from client.publish import SpecSettings
        from shared.privacy import DEFAULT_DELTA

        spec = SpecSettings(self.spec_kinds, self.spec_epsilon)
        for c in self.contributors:
            n = c.texts + c.task_records * len(c.tasks)
            try:
                if c.federated:
                    spec.budget(DEFAULT_DELTA).require_texts(n)
                else:
                    spec.check_fits(n, DEFAULT_DELTA)
            except LwmError as exc:
                raise type(exc)(f"{c.name}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------ reading

    @classmethod
    def profile_named(cls, name: str) -> SimulationConfig:
        return cls.from_dict(_profile_raw(name))

    @classmethod
    def from_toml(cls, path: str | Path, profile: str | None = None) -> SimulationConfig:
        """Read FILE.toml; it may name a ``profile`` to start from (``--profile`` wins).
        Relative data paths in it are read from FILE.toml's folder."""
        file = Path(path)
        raw = read_toml(file)
        start = profile or raw.pop("profile", None)
        if start is not None:
            base = _profile_raw(str(start))
            if "contributors" in raw:  # the profile's task users name the profile's holders
                base.pop("tasks", None)
            raw = {**base, **raw, "profile": f"{start}+{file.name}"}
        return cls.from_dict(raw, folder=file.parent)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], folder: Path | None = None) -> SimulationConfig:
        """The config of ``raw`` (a parsed TOML file); relative data paths are read from
        ``folder`` (None: the working directory)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInput(f"unknown settings in the simulation config: {unknown}")
        here = folder if folder is not None else Path.cwd()
        try:
            values = dict(raw)
            values["contributors"] = tuple(
                _record(
                    Contributor,
                    _with_files(c, ("sources", "tasks", "user_sources"), here),
                    "contributors",
                )
                for c in raw.get("contributors", [])
            )
            values["tasks"] = tuple(
                _record(TaskUsers, _with_files(t, ("data",), here), "tasks")
                for t in raw.get("tasks", [])
            )
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


def _slug(where: str, value: object) -> None:
    from shared.learnware import _check  # the manifest's rule; its package imports crypto

    _check.slug(where, value)


def source_label(source: Source) -> str:
    """How a source is shown: its built-in name, or its file's name (and split)."""
    if isinstance(source, str):
        return source
    return source.path.name + (f"[{source.split}]" if source.split else "")


def _with_files(raw: Any, keys: tuple[str, ...], folder: Path) -> Any:
    """``raw`` (a contributor's or task's table) with the data tables under ``keys`` (a list
    of sources, or one table for ``data``) made ``DataSource``s with absolute paths."""
    if not isinstance(raw, dict):
        return raw  # _record says what is wrong
    out = dict(raw)
    for key in (k for k in keys if k in raw):
        where = f"{raw.get('name', '?')}: {key}"
        if key == "data":
            out[key] = _data_source(raw[key], folder, where)
        elif not isinstance(raw[key], list):
            raise InvalidInput(f"{where} must be a list, got {raw[key]!r}")
        else:
            out[key] = [
                s if isinstance(s, str) else _data_source(s, folder, where) for s in raw[key]
            ]
    return out


def _data_source(raw: Any, folder: Path, where: str) -> DataSource:
    from shared.data.columns import DataSource

    known = [f.name for f in fields(DataSource)]
    if not isinstance(raw, dict):
        raise InvalidInput(
            f'{where}: a file is a table like {{ path = "data.jsonl" }}, got {raw!r}'
        )
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {unknown} (use {', '.join(known)})")
    for key, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            raise InvalidInput(f"{where}: {key} must be a non-blank string, got {value!r}")
    if "path" not in raw:
        raise InvalidInput(f"{where}: a file table needs a path")
    path = Path(raw["path"]).expanduser()
    return DataSource(**{**raw, "path": path if path.is_absolute() else folder / path})


def _profile_raw(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise InvalidInput(f"unknown profile {name!r}; use {', '.join(PROFILES)}")
    text = resources.files("client.simulate").joinpath(f"profiles/{name}.toml").read_text()
    return {**tomllib.loads(text), "profile": name}

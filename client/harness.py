"""lm-evaluation-harness on a learnware, on the user's machine (``lwm evaluate --tasks``).

A task is named three ways, and all are resolved before any model loads (a bad name or a
data set that cannot be had fails in seconds, not after a model load):

- **the user's own data** (a path: any file or folder ``lwm evaluate`` reads, with the same
  ``--split`` and columns): a local YAML task is written for it into a temporary folder,
  ``dataset_path: json`` over the loaded records saved as JSONL. Text, or labelled records
  with more than ``MAX_LABELS`` labels, becomes a ``loglikelihood_rolling`` task of the
  records' text (``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``: on the same
  text these equal ``lwm evaluate``'s by construction, see ``client.evaluate``); labelled
  records become a ``multiple_choice`` task over the same candidates ``lwm evaluate`` uses
  (a record's own choices, else the distinct responses; ``acc``, ``acc_norm``), prompt then
  ``"\\n"`` then the choice, the layout adapters are trained on. No YAML to write;
- **a YAML task file** the user wrote (``.yaml``/``.yml``), as lm-eval reads it;
- **a built-in lm-eval task** by name (``hellaswag``). Its data set comes from the Hugging
  Face Hub, which this project never calls (``HF_HUB_OFFLINE``): it runs only when the data
  set is in the local ``datasets`` cache, else a one-line ``DataError`` names the task.

The model is the one ``client.run`` loaded and verified (base + adapter, offline), handed to
lm-eval's ``HFLM`` as an object, so nothing is fetched. Each task runs with the adapter on
and then off (the bare base model) on the same weights, for the comparison.

lm-eval is the optional extra ``eval`` (``pip install '.[eval]'``); it is imported only
inside these functions.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.evaluate import LABEL_SEPARATOR, MAX_LABELS, context_length, with_and_without_adapter
from shared.data import DataSource, Record, load_dataset
from shared.errors import DataError, FailedPrecondition, InvalidInput

if TYPE_CHECKING:
    from client.run import LoadedLearnware

YAML_SUFFIXES = (".yaml", ".yml")
TEXT_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
CHOICE_METRICS = ("acc", "acc_norm")
#: Loggers that narrate lm-eval's and datasets' work; quietened so stderr keeps only our lines.
CHATTY_LOGGERS = ("lm_eval", "lm-eval", "datasets")


@dataclass(frozen=True)
class TaskScore:
    """One figure of one task: the learnware's and the bare base model's."""

    task: str
    metric: str
    learnware: float
    base: float


@dataclass(frozen=True)
class HarnessResult:
    """Every figure lm-eval reported, in task order, and the time both runs took."""

    scores: tuple[TaskScore, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        rows = [vars(s) for s in self.scores]
        return {"scores": rows, "seconds": self.seconds}


@dataclass(frozen=True)
class PreparedTasks:
    """lm-eval's loaded tasks (``TaskManager.load``'s dict) and the names the user gave."""

    task_dict: dict[str, Any]
    names: tuple[str, ...]


def split_tasks(text: str) -> list[str]:
    """``--tasks T1,T2``: the names, blanks dropped; none at all is an error."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InvalidInput("--tasks needs at least one task name or data file")
    return names


def require_lm_eval() -> None:
    """lm-eval is an optional extra: say how to get it, in one line."""
    try:
        import lm_eval  # noqa: F401
    except ImportError as error:
        raise FailedPrecondition(
            "--tasks needs lm-evaluation-harness: install .[eval] (pip install 'lm-eval==0.4.13')"
        ) from error


@contextmanager
def prepared_tasks(names: Sequence[str], options: DataSource) -> Iterator[PreparedTasks]:
    """Load every task ``names`` names (data paths, YAML files, lm-eval names), before any
    model. Data paths are read with ``options``' split and columns; their generated tasks
    live in a temporary folder until the context ends."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="lwm-tasks-") as tmp, _quiet():
        folder = Path(tmp)
        specs: dict[str, str] = {}  # what the user wrote -> the file lm-eval loads
        builtin: list[str] = []  # lm-eval's own task names
        for name in names:
            if Path(name).suffix.lower() in YAML_SUFFIXES:
                specs[name] = str(_existing(Path(name)))
            elif "/" in name or Path(name).exists():
                records = load_dataset(replace(options, path=Path(name))).records
                specs[name] = str(write_local_task(folder, _task_name(name, specs), records))
            else:
                builtin.append(name)
        manager = TaskManager(include_defaults=bool(builtin))
        loaded = [
            _load(manager, name, specs[name]) if name in specs else _load_builtin(manager, name)
            for name in names
        ]
        yield PreparedTasks(_merged(loaded), tuple(names))


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: no such task file")
    return path.resolve()


def _task_name(path: str, taken: dict[str, str]) -> str:
    """``lwm_`` and the file's stem, made a plain identifier, unique among this run's."""
    stem = re.sub(r"\W+", "_", Path(path).stem).strip("_").lower() or "data"
    used = {Path(spec).stem for spec in taken.values()}
    name, n = f"lwm_{stem}", 2
    while name in used:
        name, n = f"lwm_{stem}_{n}", n + 1
    return name


def write_local_task(folder: Path, name: str, records: Sequence[Record]) -> Path:
    """Write ``name``.yaml and its records as ``name``.jsonl into ``folder``; the YAML path.

    Labelled records become a multiple-choice task over the candidates ``lwm evaluate``
    scores them on (``shared.data.tasks.candidates``: a record's own choices, else the
    task's label set, at most ``MAX_LABELS``); anything else a rolling perplexity task of
    each record's full text.
    """
    import yaml

    from shared.data.tasks import candidates

    data = folder / f"{name}.jsonl"
    labelled = all(r.is_labelled for r in records)
    options = candidates(records, MAX_LABELS) if labelled else None
    if options is not None:
        rows = [
            {"prompt": r.prompt, "choices": list(o), "label": o.index(str(r.response))}
            for r, o in zip(records, options, strict=True)
        ]
        task = _choice_task()
    else:
        rows = [{"text": r.full_text} for r in records]
        task = _text_task()
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "cache")},
        "test_split": "test",
        **task,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _text_task() -> dict[str, Any]:
    metrics = [_metric(m, "weighted_perplexity", False) for m in TEXT_METRICS[:2]]
    metrics.append(_metric("bits_per_byte", "bits_per_byte", False))
    return {
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": metrics,
    }


def _choice_task() -> dict[str, Any]:
    return {
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_target": "label",
        "doc_to_choice": "choices",
        "target_delimiter": LABEL_SEPARATOR,
        "metric_list": [_metric(m, "mean", True) for m in CHOICE_METRICS],
    }


def _metric(name: str, aggregation: str, higher_is_better: bool) -> dict[str, Any]:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better}


def _load_builtin(manager: Any, name: str) -> dict[str, Any]:
    """An lm-eval task by name: known, and its data set in the local cache (the Hub is off)."""
    if name not in manager.all_tasks:
        near = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise InvalidInput(f"unknown task {name!r}: not an lm-eval task, nor a file here{hint}")
    hub = (
        "; built-in tasks read their data set from the Hugging Face Hub and lwm runs"
        " offline: cache it online first, or give your own data file"
    )
    return _load(manager, name, name, hub)


def _load(manager: Any, name: str, spec: str, hint: str = "") -> dict[str, Any]:
    """One task loaded, or one line saying which and why."""
    try:
        loaded: dict[str, Any] = manager.load(spec)
    except Exception as error:  # lm-eval and datasets raise anything; one line names the task
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(f"task {name!r} cannot load its data: {reason}{hint}") from error
    return loaded


def _merged(loaded: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    for part in loaded:
        for key in merged:
            merged[key].update(part.get(key) or {})
    return merged


@contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval and datasets log warnings for things the user cannot change (an in-memory
    model, default aggregations); errors still reach the user, as our one line."""
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def run_tasks(
    learnware: LoadedLearnware, tasks: PreparedTasks, *, batch_size: int = 16
) -> HarnessResult:
    """Run ``tasks`` on the learnware and on its bare base model (adapter switched off)."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    with _quiet():
        model, tokenizer = learnware.active_model(), learnware.tokenizer
        length = context_length(model, tokenizer)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=length)

        def run(_: Any) -> dict[str, dict[str, float]]:
            results = evaluator.evaluate(
                lm, tasks.task_dict, bootstrap_iters=0, log_samples=False, verbosity="ERROR"
            )
            return _figures(results or {})

        tuned, base = with_and_without_adapter(learnware, run)
    assert base is not None
    scores = [
        TaskScore(task, metric, value, base[task][metric])
        for task, metrics in tuned.items()
        for metric, value in metrics.items()
    ]
    return HarnessResult(tuple(scores), time.perf_counter() - started)


def _figures(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-eval's results: ``"acc,none"`` becomes ``acc``
    (another filter than ``none`` stays in the name); standard errors are left out."""
    figures: dict[str, dict[str, float]] = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _, kind = key.partition(",")
            if not kind or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            name = metric if kind == "none" else f"{metric},{kind}"
            figures.setdefault(task, {})[name] = float(value)
    return figures

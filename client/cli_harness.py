"""``lwm evaluate --tasks``: lm-evaluation-harness tasks on a learnware and its base model.

Called by ``client.cli_user.evaluate``; the work is in ``client.harness``. Tasks are loaded
first (a bad name, a missing file or a data set the Hub would have to send fails in seconds),
then the learnware, then both runs. A rich table (task, metric, base, learnware) or JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shared.cli_options import console

if TYPE_CHECKING:
    from client.harness import HarnessResult
    from client.run import LoadedLearnware
    from shared.data import DataSource


def evaluate_tasks(
    load: Callable[[], LoadedLearnware],
    names: Sequence[str],
    options: DataSource,
    *,
    batch_size: int,
    as_json: bool,
) -> None:
    """Run ``names`` (lm-eval tasks, YAML files, data paths read with ``options``) on the
    learnware ``load`` gives and on its base model; print the comparison."""
    from client.harness import prepared_tasks, run_tasks

    with prepared_tasks(names, options) as tasks:
        learnware = load()
        result = run_tasks(learnware, tasks, batch_size=batch_size)
    if as_json:
        payload: dict[str, Any] = {"learnware": str(learnware.path)}
        payload |= {"name": learnware.manifest.name, "tasks": list(tasks.names)}
        print(json.dumps(payload | result.to_dict(), indent=2))
    else:
        _print_scores(learnware.manifest.name, result)


def _print_scores(name: str, result: HarnessResult) -> None:
    from rich.table import Table

    table = Table(title=f"lm-evaluation-harness: {name} against its base model")
    table.caption = f"{result.seconds:.1f} s for both runs"
    for column in ("task", "metric", "base", "learnware"):
        table.add_column(column, justify="right" if column in ("base", "learnware") else "left")
    for s in result.scores:
        table.add_row(s.task, s.metric, f"{s.base:.6g}", f"{s.learnware:.6g}")
    console(width=max(console().width, 100)).print(table)

"""The report's PNG plots, drawn from ``results`` with matplotlib's Agg backend."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from client.simulate.contenders import METRICS

COLOURS = MappingProxyType(
    {
        "Base": "#9e9e9e",
        "Random": "#bdbdbd",
        "Best-single": "#8da0cb",
        "Oracle": "#66c2a5",
    }
)
KIND_COLOURS = ("#fc8d62", "#e78ac3", "#a6d854")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(results: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """Draw every plot into ``out``; returns (file name, caption) pairs for the report."""
    kinds = list(results["config"]["spec_kinds"])
    figures = [("contenders.png", "Perplexity of the five contenders per user")]
    contenders_bars(results, kinds, out / "contenders.png")
    if any(row["accuracy"] for row in results["contenders"]):
        accuracy_bars(results, kinds, out / "accuracy.png")
        figures.append(("accuracy.png", "Accuracy of the five contenders per labelled user"))
    for kind in kinds:
        name = f"similarity-{kind}.png"
        similarity_heatmap(results, kind, out / name)
        figures.append((name, f"User x learnware similarity ({kind})"))
    identification_curve(results, kinds, out / "identification.png")
    figures.append(("identification.png", "Identification accuracy against the user's epsilon"))
    return figures


def _series(
    rows: list[dict[str, Any]], kinds: list[str], value: Callable[[float], float]
) -> dict[str, list[float]]:
    """The five contenders' bars (one value per row), ``value`` mapping a row's figure."""
    series: dict[str, list[float]] = {
        "Base": [value(row["base"]) for row in rows],
        "Random": [value(row["random"]) for row in rows],
        "Best-single": [value(row["best_single"]) for row in rows],
    }
    for k in kinds:
        series[f"Learnware ({k})"] = [value(row["learnware"][k]) for row in rows]
    series["Oracle"] = [value(row["oracle"]) for row in rows]
    return series


def _bars(ax: Any, users: list[str], series: dict[str, list[float]]) -> None:
    n, width = len(users), 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        colour = COLOURS.get(label) or KIND_COLOURS[(i - 3) % len(KIND_COLOURS)]
        xs = [x + (i - len(series) / 2 + 0.5) * width for x in range(n)]
        ax.bar(xs, values, width, label=label, color=colour)
    ax.set_xticks(range(n), users, rotation=45, ha="right", fontsize=8)


def contenders_bars(results: dict[str, Any], kinds: list[str], path: Path) -> None:
    plt = _pyplot()
    rows = results["contenders"]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows) + 2), 4.8))
    _bars(ax, [row["user"] for row in rows], _series(rows, kinds, math.exp))
    ax.set_yscale("log")
    ax.set_ylabel("token perplexity (log scale, lower is better)")
    ax.set_title("Per user: base model, random / best single / market-picked / oracle learnware")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_bars(results: dict[str, Any], kinds: list[str], path: Path) -> None:
    """acc and acc_norm side by side, for the users with a labelled task."""
    plt = _pyplot()
    rows = [row for row in results["contenders"] if row["accuracy"]]
    metrics = [m for m in METRICS if any(m in row["accuracy"] for row in rows)]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(max(8, 1.4 * len(rows) + 4), 4.4), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        mine = [row for row in rows if metric in row["accuracy"]]
        figures = [row["accuracy"][metric] for row in mine]
        _bars(ax, [row["user"] for row in mine], _series(figures, kinds, lambda x: 100 * x))
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"{metric} (%, higher is better)")
        ax.set_title(metric)
    axes[0][0].legend(fontsize=8, ncol=2)
    fig.suptitle("Labelled tasks: base model, random / best single / market-picked / oracle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def similarity_heatmap(results: dict[str, Any], kind: str, path: Path) -> None:
    plt = _pyplot()
    learnwares = [x["contributor"] for x in results["learnwares"]]
    queries = [q for q in results["searches"] if q["kind"] == kind]
    users = {u["name"]: u for u in results["users"]}
    matrix = [[q["scores"].get(name, float("nan")) for name in learnwares] for q in queries]
    fig, ax = plt.subplots(figsize=(0.5 * len(learnwares) + 4, 0.35 * len(queries) + 2.5))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(learnwares)), learnwares, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(queries)), [q["user"] for q in queries], fontsize=8)
    for u, q in enumerate(queries):
        pick = learnwares.index(q["pick"])
        colour = "white" if q["pick"] in users[q["user"]]["right"] else "red"
        ax.add_patch(plt.Rectangle((pick - 0.5, u - 0.5), 1, 1, fill=False, ec=colour, lw=2))
    ax.set_xlabel("learnware in the market")
    ax.set_ylabel("user")
    ax.set_title(f"{kind} similarity (box = market's pick; red = wrong)")
    fig.colorbar(image, ax=ax, label="market score (higher is closer)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def identification_curve(results: dict[str, Any], kinds: list[str], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, kind in enumerate(kinds):
        acc = results["sweep_accuracy"][kind]
        eps = sorted(acc, key=float)
        ax.plot([float(e) for e in eps], [100 * acc[e] for e in eps], "o-", label=kind,
                color=KIND_COLOURS[i % len(KIND_COLOURS)])  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("user's spec epsilon (log scale)")
    ax.set_ylabel("users given a right learnware (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Identification accuracy against privacy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

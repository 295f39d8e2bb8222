"""``report.md`` and its plots, made from one run's ``results`` (nothing else is read).

Perplexities are token perplexities of the user's held-out records (lower is better);
accuracies (labelled tasks only) are percentages of records answered right (higher is
better); the module docstring of ``client.simulate.contenders`` defines the contenders, the
gap and the accuracy metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.simulate import plots
from client.simulate.contenders import METRICS

PERPLEXITY_NOTE = (
    "Gap closed = (Random − Learnware) / (Random − Oracle) on mean log-perplexity; "
    "the paper closed 90% in finance, 62% medical, 40% maths. Checked: the pick of the "
    "local check before reuse (`lwm reuse --merge`: the market's top k, their merge and "
    "Base scored on each user's check records, never the scored ones); Merged top-k: the "
    "market's top k merged into one adapter (equal weights)."
)


def write_report(results: dict[str, Any], out: Path) -> None:
    kinds = list(results["config"]["spec_kinds"])
    figures = plots.draw_all(results, out)
    lines = [
        *_head(results),
        *_summary(results, kinds),
        *_domain_table(results, kinds),
        *_accuracy_table(results, kinds),
        *[f"![{caption}]({name})" for name, caption in figures],
        "",
        *_user_table(results, kinds),
        *_sweep_table(results, kinds),
        *_privacy(results, kinds),
        *_learnwares(results),
        *_phases(results),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _head(r: dict[str, Any]) -> list[str]:
    c, m = r["config"], r["machine"]
    return [
        f"# Simulated learnware market: {c['profile']} profile",
        "",
        f"Base model `{c['base_model']}`; {len(r['learnwares'])} learnwares from "
        f"{sum(x['holders'] for x in r['learnwares'])} data holders; {len(r['users'])} users; "
        f"specs {', '.join(c['spec_kinds'])} at epsilon {c['spec_epsilon']} (contributors) and "
        f"{c['user_epsilon']} (users). Ran in {r['seconds']:.0f} s on {m['cpus']} CPUs "
        f"({m['platform']}, Python {m['python']}, torch {m['torch']}). {_precision(r)}",
        "",
        "Every figure below was measured in this run (results.json holds them all).",
        "",
    ]


def _precision(r: dict[str, Any]) -> str:
    chosen = r["config"]["users"].get("score_precision", "float32")
    if chosen == "auto":
        chosen = "bfloat16" if r["machine"].get("bf16_native") else "float32"
    if chosen == "float32":
        return "Scores in float32."
    return "Scores in bfloat16 autocast (weights, norms and the loss in float32)."


def _summary(r: dict[str, Any], kinds: list[str]) -> list[str]:
    lines = ["## Summary", ""]
    overall = next(row for row in r["table"] if row["group"] == "all")
    for kind in kinds:
        ident = r["identification"][kind]
        beats = r["beats_base"][kind]
        lines.append(
            f"- **{kind}**: right learnware for {ident['correct']}/{ident['users']} users "
            f"({_pct(ident['accuracy'])}); the market's pick beats Base for "
            f"{beats['beaten']}/{beats['users']} users; gap closed over all users "
            f"{_pct(overall['gap_closed'][kind])}."
        )
        checked = r.get("checked_beats_base", {}).get(kind)
        if checked is not None:
            lines.append(
                f"  After the local check (top {r['config']['users']['check_top_k']}, their "
                f"merge, or Base) the pick beats Base for {checked['beaten']}/"
                f"{checked['users']} users."
            )
    lines += [f"- Best single learnware for everyone: `{r['best_single']}`.", ""]
    return lines


def _domain_table(r: dict[str, Any], kinds: list[str]) -> list[str]:
    head = ["domain", "users", "Base", "Random", "Best-single"]
    head += [f"Learnware ({k})" for k in kinds]
    head += [f"{what} ({k})" for what in ("Checked", "Merged top-k") for k in kinds]
    head += ["Oracle"] + [f"gap closed ({k})" for k in kinds]
    lines = [
        "## Perplexity per domain (lower is better)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in r["table"]:
        cells = [row["group"], str(row["users"]), _fmt(row["base"]), _fmt(row["random"])]
        cells += [_fmt(row["best_single"])] + [_fmt(row["learnware"][k]) for k in kinds]
        cells += [_fmt(row.get(what, {}).get(k)) for what in ("checked", "merged") for k in kinds]
        cells += [_fmt(row["oracle"])] + [_pct(row["gap_closed"][k]) for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", PERPLEXITY_NOTE, ""]


def _accuracy_table(r: dict[str, Any], kinds: list[str]) -> list[str]:
    """The paper's table for labelled tasks: mean accuracy in %, acc and acc_norm rows."""
    rows = r.get("accuracy_table", [])
    if not rows:
        return []
    head = ["domain", "metric", "users", "Base", "Random", "Best-single"]
    head += [f"Learnware ({k})" for k in kinds] + ["Oracle"]
    lines = [
        "## Accuracy per domain, labelled tasks (%, higher is better)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        m = row["mean"]
        cells = [row["group"], row["metric"], str(row["users"])]
        values = [m["base"], m["random"], m["best_single"], *(m["learnware"][k] for k in kinds)]
        cells += [_fmt(100 * v) for v in [*values, m["oracle"]]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "acc: the choice with the highest log-likelihood given the question; acc_norm: the "
        "same divided by the choice's length (lm-evaluation-harness's definitions). "
        "Best-single and Oracle are chosen by each metric. The paper's Learnware row: "
        "66.60 finance, 75.13 medical, 52.62 maths.",
        "",
    ]
    return lines


def _user_table(r: dict[str, Any], kinds: list[str]) -> list[str]:
    import math

    head = ["user", "data", *[f"pick ({k})" for k in kinds]]
    head += [f"checked pick ({k})" for k in kinds] + ["oracle pick", "Base"]
    head += [f"Learnware ({k})" for k in kinds] + ["Oracle"]
    head += [f"{metric} base → pick" for metric in METRICS]
    lines = ["## Per user", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    users = {u["name"]: u for u in r["users"]}
    for row in r["contenders"]:
        u = users[row["user"]]
        picks = [_mark(row["picks"][k], u["right"]) for k in kinds]
        checked = [row.get("checked_picks", {}).get(k, "n/a") for k in kinds]
        cells = [row["user"], u["source"], *picks, *checked, row["oracle_pick"]]
        cells += [_fmt(math.exp(row["base"]))]
        cells += [_fmt(math.exp(row["learnware"][k])) for k in kinds]
        cells += [_fmt(math.exp(row["oracle"]))]
        cells += [_base_to_pick(row["accuracy"].get(metric), kinds) for metric in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "A pick in **bold** is a right one for that user.", ""]
    return lines


def _base_to_pick(acc: dict[str, Any] | None, kinds: list[str]) -> str:
    if acc is None:
        return ""
    return f"{_pct(acc['base'])} → {', '.join(_pct(acc['learnware'][k]) for k in kinds)}"


def _mark(pick: str, right: list[str]) -> str:
    return f"**{pick}**" if pick in right else pick


def _sweep_table(r: dict[str, Any], kinds: list[str]) -> list[str]:
    eps = [str(e) for e in r["config"]["sweep_epsilons"]]
    lines = [
        "## Identification against the user's epsilon",
        "",
        "| kind | " + " | ".join(f"ε={e}" for e in eps) + " |",
        "|---|" + "---|" * len(eps),
    ]
    for kind in kinds:
        acc = r["sweep_accuracy"][kind]
        lines.append(f"| {kind} | " + " | ".join(_pct(acc[e]) for e in eps) + " |")
    return [*lines, ""]


def _privacy(r: dict[str, Any], kinds: list[str]) -> list[str]:
    lines = [
        "## Privacy spent",
        "",
        "Per learnware, each release on the holders' data and their composition in one RDP "
        "accountant (total None: the adapter was trained without DP-SGD, so no total "
        "guarantee holds).",
        "",
        "| learnware | holders | " + " | ".join(["releases (ε)", "total ε", "δ"]) + " |",
        "|---|---|---|---|---|",
    ]
    for x in r["learnwares"]:
        parts = ", ".join(f"{p['what']} {_fmt(p['epsilon'])}" for p in x["dp"]["parts"])
        lines.append(
            f"| {x['contributor']} | {x['holders']} | {parts} | "
            f"{_fmt(x['dp']['total_epsilon'])} | {x['dp']['total_delta']:g} |"
        )
    c = r["config"]
    lines += [
        "",
        f"Each user released one spec per kind ({', '.join(kinds)}) at ε={c['user_epsilon']}; "
        "the identification sweep is an experiment, a real user releases one spec per search.",
        "",
    ]
    return lines


def _learnwares(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Learnwares",
        "",
        "| contributor | holders | id | status | built |",
        "|---|---|---|---|---|",
    ]
    for x in r["learnwares"]:
        built = "cached" if x["cached"] else f"{x['built_seconds']:.0f} s"
        lines.append(
            f"| {x['contributor']} | {x['holders']} | `{x['id']}` | {x['status']} | {built} |"
        )
    return [*lines, ""]


def _phases(r: dict[str, Any]) -> list[str]:
    lines = ["## Time per phase", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in r["phases"].items()]
    return [*lines, f"| **total** | {r['seconds']:.1f} |", ""]

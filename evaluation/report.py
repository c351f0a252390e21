"""Tables and charts of evaluation results (plain text and PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _numeric(cell: str) -> bool:
    if cell == "—":
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; text left, numbers right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            padded = cell.rjust(widths[i]) if _numeric(cell) else cell.ljust(widths[i])
            out.append(padded)
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def mbeir_table(summary: dict[str, Any]) -> str:
    """One row per set in the paper's order, then the plain-mean average."""
    weights = list(summary["average"]["rerank"])
    published = summary.get("published")
    header = ["Task", "Dataset", "Metric", "Queries", "Ours"]
    header += [f"+rerank w={w}" for w in weights]
    if published:
        header += [published["name"], f"{published['name']}+"]
    rows = []
    for task in summary["tasks"]:
        row = [task["task"], task["dataset"], task["metric"], str(task["queries"])]
        row += [_cell(task["recall"])] + [_cell(task["rerank"].get(w)) for w in weights]
        if published:
            row += ["—", "—"]  # only the averages are published per checkpoint here
        rows.append(row)
    count = sum(1 for task in summary["tasks"] if task["recall"] is not None)
    label = "Average" if summary["complete"] else f"Average of {count} sets"
    average = ["", label, "", ""]
    average += [_cell(summary["average"]["recall"])]
    average += [_cell(summary["average"]["rerank"].get(w)) for w in weights]
    if published:
        average += [_cell(published["recall"]), _cell(published["rerank"])]
    rows.append(average)
    title = f"M-BEIR ({summary['pool']} pool, {summary['index']} search), model {summary['model']}"
    return title + "\n" + format_table(header, rows)


def bar_chart(
    path: Path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    ylabel: str,
    reference: dict[str, float] | None = None,
) -> None:
    """Grouped bars, one group per label and one colour per series; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) * max(len(series), 1)), 4.5))
    for n, (name, values) in enumerate(series.items()):
        xs = [i + n * width for i in range(len(labels))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=name)
    for name, value in (reference or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey")
        ax.annotate(name, (len(labels) - 0.5, value), fontsize=7, va="bottom", ha="right")
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mbeir_chart(summary: dict[str, Any], path: Path) -> None:
    labels = [f"{t['dataset']} {t['task']}" for t in summary["tasks"]] + ["Average"]
    series: dict[str, list[float | None]] = {
        "ours": [t["recall"] for t in summary["tasks"]] + [summary["average"]["recall"]]
    }
    for weight in summary["average"]["rerank"]:
        series[f"+rerank w={weight}"] = [t["rerank"].get(weight) for t in summary["tasks"]] + [
            summary["average"]["rerank"][weight]
        ]
    reference = None
    if summary.get("published"):
        name = summary["published"]["name"]
        reference = {
            f"{name} avg": summary["published"]["recall"],
            f"{name}+ avg": summary["published"]["rerank"],
        }
    bar_chart(
        path, labels, series, f"M-BEIR Recall@k, {summary['model']}", "Recall@k (%)", reference
    )

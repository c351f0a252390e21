"""Quality on your own data: labelled queries through the live HTTP API.

The queries file is JSONL, one labelled query per line::

    {"query": "a red square", "relevant": ["doc-1", "doc-7"]}
    {"query": {"text": "like this", "image_path": "q/3.png", "instruction": "..."},
     "relevant": {"doc-2": 2, "doc-9": 1}}

``query`` is a text or an object with the query's fields: ``text``, ``image_path`` (read
beside the file), ``instruction``, ``use_default_instruction``, ``filter``. ``relevant``
lists the relevant document ids, or maps them to graded relevance for nDCG. Each query runs
twice, without and with rerank, through the same endpoint clients use; the report has
Recall@k (the share of relevant documents in the top k), MRR, nDCG@10 and the latency of
each stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidRequest
from core.jsonl import read_jsonl
from evaluation import metrics
from umarvel_client import Client

MODES = {"recall": False, "rerank": True}
NDCG_K = 10


@dataclass(frozen=True)
class Labelled:
    line: int
    request: dict[str, Any]
    relevant: dict[str, float]


def read_queries(path: Path) -> Iterator[Labelled]:
    """Labelled queries; a malformed line stops the run with its line number."""
    for number, row in read_jsonl(path):
        if not isinstance(row, dict) or "query" not in row or "relevant" not in row:
            raise InvalidRequest(f"{path}:{number}: needs 'query' and 'relevant'")
        yield Labelled(number, _request(row["query"], path, number), _grades(row, path, number))


QUERY_FIELDS = frozenset({"text", "image_path", "instruction", "use_default_instruction", "filter"})


def _request(query: Any, path: Path, number: int) -> dict[str, Any]:
    """Keyword arguments of ``Client.search``."""
    if isinstance(query, str):
        return {"text": query}
    if not isinstance(query, dict):
        raise InvalidRequest(f"{path}:{number}: 'query' must be a text or an object")
    unknown = sorted(set(query) - QUERY_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"{path}:{number}: unknown query fields {unknown}; use {sorted(QUERY_FIELDS)}"
        )
    request = dict(query)
    image_path = request.pop("image_path", None)
    if image_path is not None:
        image = Path(image_path)
        image = image if image.is_absolute() else path.parent / image
        try:
            request["image"] = image.read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"{path}:{number}: cannot read {image}: {exc.strerror}") from None
    return request


def _grades(row: dict[str, Any], path: Path, number: int) -> dict[str, float]:
    relevant = row["relevant"]
    if isinstance(relevant, list) and all(isinstance(r, str) for r in relevant):
        return dict.fromkeys(relevant, 1.0)
    if isinstance(relevant, dict) and all(isinstance(g, (int, float)) for g in relevant.values()):
        # A grade of 0 is a judged non-relevant document: it counts for no metric.
        return {str(doc): float(grade) for doc, grade in relevant.items() if grade > 0}
    raise InvalidRequest(f"{path}:{number}: 'relevant' must be a list of ids or an id->grade map")


@dataclass
class ModeScores:
    recall: dict[int, list[float]]
    mrr: list[float]
    ndcg: list[float]
    latency: list[float]
    stages: dict[str, list[float]]
    cached: int = 0


def evaluate(
    client: Client,
    collection: str,
    queries: Sequence[Labelled],
    ks: Sequence[int] = (1, 5, 10),
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every labelled query without and with rerank; return metrics and latencies."""
    depth = max(*ks, NDCG_K)
    scores = {mode: ModeScores({k: [] for k in ks}, [], [], [], {}) for mode in MODES}
    skipped = 0
    records = []
    for item in queries:
        if not any(g > 0 for g in item.relevant.values()):
            skipped += 1
            continue
        record: dict[str, Any] = {"line": item.line}
        for mode, enabled in MODES.items():
            started = time.perf_counter()
            answer = client.search(collection, **item.request, top_k=depth, rerank=enabled)
            elapsed = time.perf_counter() - started
            ranking = [hit.document_id for hit in answer.hits]
            s = scores[mode]
            for k in ks:
                s.recall[k].append(metrics.recall_at_k(ranking, item.relevant, k))
            s.mrr.append(metrics.reciprocal_rank(ranking, item.relevant))
            s.ndcg.append(metrics.ndcg_at_k(ranking, item.relevant, NDCG_K))
            s.latency.append(elapsed)
            s.cached += answer.cached
            for stage, seconds in answer.timings.items():
                s.stages.setdefault(stage, []).append(float(seconds))
            record[mode] = {"top": ranking[:depth], "seconds": round(elapsed, 4)}
        records.append(record)
        if progress is not None:
            progress(1)
    return {
        "collection": collection,
        "queries": len(records),
        "skipped_no_relevant": skipped,
        "ks": list(ks),
        "modes": {mode: _summary(s) for mode, s in scores.items()},
        "records": records,
    }


def _summary(s: ModeScores) -> dict[str, Any]:
    return {
        "recall": {str(k): metrics.mean(v) for k, v in s.recall.items()},
        "mrr": metrics.mean(s.mrr),
        "ndcg@10": metrics.mean(s.ndcg),
        "latency_ms": _latency(s.latency),
        "stage_ms": {stage: _latency(v) for stage, v in sorted(s.stages.items())},
        "cached": s.cached,
    }


def _latency(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"mean": None, "p50": None, "max": None}
    ordered = sorted(seconds)
    return {
        "mean": round(1000 * sum(ordered) / len(ordered), 2),
        "p50": round(1000 * ordered[len(ordered) // 2], 2),
        "max": round(1000 * ordered[-1], 2),
    }


def table(summary: dict[str, Any]) -> str:
    from evaluation.report import format_table

    ks = summary["ks"]
    header = ["Mode", *(f"R@{k}" for k in ks), "MRR", "nDCG@10", "p50 ms", "cached"]
    rows = []
    for mode, s in summary["modes"].items():
        values = [*(s["recall"][str(k)] for k in ks), s["mrr"], s["ndcg@10"]]
        rows.append(
            [mode, *(_pct(v) for v in values), _ms(s["latency_ms"]["p50"]), str(s["cached"])]
        )
    stages = sorted({st for s in summary["modes"].values() for st in s["stage_ms"]})
    stage_rows = [
        [stage, *(_ms(summary["modes"][m]["stage_ms"].get(stage, {}).get("p50")) for m in MODES)]
        for stage in stages
    ]
    title = f"{summary['collection']}: {summary['queries']} labelled queries"
    if summary["skipped_no_relevant"]:
        title += f" ({summary['skipped_no_relevant']} without a relevant id skipped)"
    return (
        title
        + "\n"
        + format_table(header, rows)
        + "\n\nStage p50 (ms, from the job's timings)\n"
        + format_table(["Stage", *MODES], stage_rows)
    )


def chart(summary: dict[str, Any], path: Path) -> None:
    from evaluation.report import bar_chart

    ks = summary["ks"]
    labels = [*(f"R@{k}" for k in ks), "MRR", "nDCG@10"]
    series = {}
    for mode, s in summary["modes"].items():
        values = [*(s["recall"][str(k)] for k in ks), s["mrr"], s["ndcg@10"]]
        series[mode] = [None if v is None else 100 * v for v in values]
    bar_chart(path, labels, series, f"{summary['collection']}: quality", "%")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"

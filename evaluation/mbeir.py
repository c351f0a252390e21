"""The M-BEIR benchmark as published: layout, the 16 test sets, and one evaluation run.

Layout under the dataset root (SPEC section 8)::

    query/test/mbeir_{name}_test.jsonl          qid, query_txt, query_img_path, query_modality
    cand_pool/local/mbeir_{name}_cand_pool.jsonl  did, txt, img_path, modality
    cand_pool/global/mbeir_union_test_cand_pool.jsonl
    qrels/test/mbeir_{name}_test_qrels.txt      "qid Q0 did rel task_id"
    instructions/query_instructions.tsv

Image paths in the files are relative to the root (or to ``image_root``). A run embeds the
pool once into an on-disk ``EmbeddingStore`` (resumable), embeds the queries with the
instruction picked for each, searches exactly (or through Milvus), optionally reranks the
top of each list, and scores Recall@k as M-BEIR defines it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core import jsonl
from core.errors import InvalidRequest
from evaluation import metrics
from evaluation.store import EmbeddingStore, exact_top_k, model_fingerprint
from recall.index import PK_FIELD, VECTOR_FIELD, MilvusIndex
from recall.instructions import InstructionTable
from recall.prompts import Candidate, Query

if TYPE_CHECKING:
    from recall.embedder import Embedder
    from rerank.reranker import Reranker

Progress = Callable[[int], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One of M-BEIR's 16 test sets."""

    name: str  # the file stem: "mscoco_task0"
    dataset: str  # as the paper writes it
    kind: str  # the task, e.g. "qt→ci"
    candidate_modality: str  # the instruction table's candidate column
    k: int  # Recall@k reported for this set


def _task(name: str, dataset: str, kind: str, modality: str, k: int = 5) -> Task:
    return Task(name, dataset, kind, modality, k)


# In the paper's column order. Fashion200K (both directions) and FashionIQ report R@10.
TASKS: tuple[Task, ...] = (
    _task("visualnews_task0", "VisualNews", "qt→ci", "image"),
    _task("mscoco_task0", "MSCOCO", "qt→ci", "image"),
    _task("fashion200k_task0", "Fashion200K", "qt→ci", "image", k=10),
    _task("webqa_task1", "WebQA", "qt→ct", "text"),
    _task("edis_task2", "EDIS", "qt→(ci,ct)", "image,text"),
    _task("webqa_task2", "WebQA", "qt→(ci,ct)", "image,text"),
    _task("visualnews_task3", "VisualNews", "qi→ct", "text"),
    _task("mscoco_task3", "MSCOCO", "qi→ct", "text"),
    _task("fashion200k_task3", "Fashion200K", "qi→ct", "text", k=10),
    _task("nights_task4", "NIGHTS", "qi→ci", "image"),
    _task("oven_task6", "OVEN", "(qi,qt)→ct", "text"),
    _task("infoseek_task6", "InfoSeek", "(qi,qt)→ct", "text"),
    _task("fashioniq_task7", "FashionIQ", "(qi,qt)→ci", "image", k=10),
    _task("cirr_task7", "CIRR", "(qi,qt)→ci", "image"),
    _task("oven_task8", "OVEN", "(qi,qt)→(ci,ct)", "image,text"),
    _task("infoseek_task8", "InfoSeek", "(qi,qt)→(ci,ct)", "image,text"),
)
TASKS_BY_NAME = {t.name: t for t in TASKS}

# Published local-pool averages (SPEC section 8), shown beside ours for those checkpoints.
PUBLISHED: dict[str, dict[str, float]] = {
    "U-MARVEL-Qwen3VL-4B": {"recall": 58.8, "rerank": 61.6},
    "U-MARVEL-Qwen2VL-7B": {"recall": 63.2, "rerank": 64.8},
}


def published_for(model: str) -> str | None:
    """The published entry a checkpoint's name or path refers to, if any."""
    lowered = model.lower()
    for name in PUBLISHED:
        if name.lower() in lowered:
            return name
    return None


def select_tasks(names: Sequence[str]) -> list[Task]:
    """Tasks by name, in the paper's order; ``all`` (or nothing) means the 16 sets."""
    if not names or "all" in names:
        return list(TASKS)
    unknown = [n for n in names if n not in TASKS_BY_NAME]
    if unknown:
        raise InvalidRequest(
            f"unknown M-BEIR set(s) {', '.join(unknown)}; known: {', '.join(TASKS_BY_NAME)}"
        )
    return [t for t in TASKS if t.name in names]


@dataclass(frozen=True)
class Layout:
    root: Path
    image_root: Path | None = None

    def queries(self, task: Task) -> Path:
        return self._existing(self.root / "query" / "test" / f"mbeir_{task.name}_test.jsonl")

    def qrels(self, task: Task) -> Path:
        return self._existing(self.root / "qrels" / "test" / f"mbeir_{task.name}_test_qrels.txt")

    def local_pool(self, task: Task) -> Path:
        folder = self.root / "cand_pool" / "local"
        published = folder / f"mbeir_{task.name}_cand_pool.jsonl"
        # MSCOCO ships its test pools as mbeir_mscoco_task{0,3}_test_cand_pool.jsonl.
        variant = folder / f"mbeir_{task.name}_test_cand_pool.jsonl"
        return variant if not published.exists() and variant.exists() else self._existing(published)

    def global_pool(self) -> Path:
        return self._existing(
            self.root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl"
        )

    def instructions(self) -> Path:
        return self._existing(self.root / "instructions" / "query_instructions.tsv")

    def image(self, relative: str | None) -> str | None:
        if not relative:
            return None
        return str((self.image_root or self.root) / relative)

    @staticmethod
    def _existing(path: Path) -> Path:
        if not path.exists():
            raise InvalidRequest(f"missing M-BEIR file {path}")
        return path


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for _, row in jsonl.read_jsonl(path):
        yield row


def read_qrels(path: Path) -> dict[str, set[str]]:
    """Relevant dids per qid (rows with ``rel > 0``)."""
    relevant: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4:
                raise InvalidRequest(f"{path}:{number}: expected 'qid Q0 did rel task_id'")
            qid, _, did, rel = parts[:4]
            try:
                grade = float(rel)
            except ValueError:
                raise InvalidRequest(
                    f"{path}:{number}: relevance {rel!r} is not a number"
                ) from None
            if grade > 0:
                relevant.setdefault(qid, set()).add(did)
    return relevant


class Pool:
    """A candidate pool file, indexed by byte offset so rows are read back on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        digest = hashlib.sha256()
        offsets: list[int] = []
        dids: list[str] = []
        with open(path, "rb") as handle:
            position = 0
            for number, line in enumerate(handle, start=1):
                digest.update(line)
                if line.strip():
                    try:
                        row = json.loads(line)
                        did = str(row["did"])
                    except (ValueError, KeyError, TypeError):
                        raise InvalidRequest(f"{path}:{number}: not a candidate row") from None
                    offsets.append(position)
                    dids.append(did)
                position += len(line)
        if len(set(dids)) != len(dids):
            raise InvalidRequest(f"{path}: candidate dids are not unique")
        self.sha256 = digest.hexdigest()
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.dids = dids

    def __len__(self) -> int:
        return len(self.dids)

    @cached_property
    def ids(self) -> frozenset[str]:
        return frozenset(self.dids)

    def rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        with open(self.path, "rb") as handle:
            out = []
            for i in indices:
                handle.seek(int(self.offsets[i]))
                out.append(json.loads(handle.readline()))
            return out


def candidate(row: dict[str, Any], layout: Layout) -> Candidate:
    return Candidate(text=row.get("txt") or None, image=layout.image(row.get("img_path")))


def embed_pool(
    embedder: Embedder,
    pool: Pool,
    store: EmbeddingStore,
    layout: Layout,
    progress: Progress | None = None,
) -> None:
    """Embed every chunk of the pool that the store does not hold yet."""
    for chunk in range(store.chunks(len(pool))):
        start, stop = store.bounds(chunk, len(pool))
        if not store.has(chunk):
            rows = pool.rows(range(start, stop))
            vectors = embedder.encode_candidates([candidate(r, layout) for r in rows])
            store.write(chunk, vectors)
        if progress is not None:
            progress(stop - start)


@dataclass
class TaskResult:
    task: Task
    pool: str
    queries: int = 0
    skipped_no_qrels: int = 0
    no_relevant_in_pool: int = 0
    hits: list[float] = field(default_factory=list)
    rerank_hits: dict[float, list[float]] = field(default_factory=dict)

    @property
    def recall(self) -> float | None:
        value = metrics.mean(self.hits)
        return None if value is None else 100.0 * value

    def rerank_recall(self, weight: float) -> float | None:
        value = metrics.mean(self.rerank_hits.get(weight, []))
        return None if value is None else 100.0 * value

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.task.name,
            "dataset": self.task.dataset,
            "task": self.task.kind,
            "metric": f"R@{self.task.k}",
            "pool": self.pool,
            "queries": self.queries,
            "skipped_no_qrels": self.skipped_no_qrels,
            "no_relevant_in_pool": self.no_relevant_in_pool,
            "recall": self.recall,
            "rerank": {str(w): self.rerank_recall(w) for w in sorted(self.rerank_hits)},
        }


@dataclass
class RunOptions:
    rerank_top: int = 50
    fusion_weights: tuple[float, ...] = ()
    instruction_seed: int | None = 0  # None: always the first instruction of the table
    query_batch: int = 64  # queries embedded at once
    query_block: int = 8192  # queries searched at once (one pass over the pool)


class Searcher:
    """Top-n pool indices per query embedding, best first (ties: lower pool index)."""

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ExactSearcher(Searcher):
    def __init__(self, store: EmbeddingStore, size: int) -> None:
        self.store = store
        self.size = size

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_top_k(self.store, self.size, queries, n)


class MilvusSearcher(Searcher):
    """Approximate search through the same HNSW index the service uses.

    The pool is loaded into a Milvus collection named after the store (so a repeated run
    reuses it), keyed by did; hits come back as pool indices.
    """

    def __init__(self, index: MilvusIndex, store: EmbeddingStore, pool: Pool, dim: int) -> None:
        self.index = index
        self.pool = pool
        self.name = f"mbeir_{store.folder.name}"
        self.position = {did: i for i, did in enumerate(pool.dids)}
        index.create(self.name, dim)
        if index.count(self.name) != len(pool):
            for chunk in range(store.chunks(len(pool))):
                start, stop = store.bounds(chunk, len(pool))
                vectors = np.asarray(store.read(chunk))
                rows = [
                    {PK_FIELD: pool.dids[start + i], VECTOR_FIELD: vectors[i].tolist()}
                    for i in range(stop - start)
                ]
                index.upsert(self.name, rows)
            index.flush(self.name)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        indices = np.full((len(queries), n), -1, dtype=np.int64)
        for row, vector in enumerate(queries):
            for column, hit in enumerate(self.index.search(self.name, vector, n)):
                scores[row, column] = hit.score
                indices[row, column] = self.position[hit.document_id]
        return scores, indices


def evaluate_task(
    task: Task,
    layout: Layout,
    pool: Pool,
    searcher: Searcher,
    embedder: Embedder,
    instructions: InstructionTable,
    options: RunOptions,
    record: Path,
    reranker: Reranker | None = None,
    progress: Progress | None = None,
) -> TaskResult:
    """Embed the task's queries, search, score; one line per query goes to ``record``."""
    relevant = read_qrels(layout.qrels(task))
    result = TaskResult(task, pool=pool.path.name)
    depth = max(task.k, options.rerank_top if reranker is not None else 0)
    tmp = record.with_name(record.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        # Queries are embedded a batch at a time but searched a block at a time: each
        # search streams the whole pool once.
        for block in _batches(read_jsonl(layout.queries(task)), options.query_block):
            labelled = []
            for row in block:
                qid = _qid(row, task)
                if qid not in relevant:
                    result.skipped_no_qrels += 1
                    continue
                labelled.append((row, _instruction(row, task, instructions, options)))
            queries = [
                Query(
                    text=row.get("query_txt") or None,
                    image=layout.image(row.get("query_img_path")),
                    instruction=instruction,
                )
                for row, instruction in labelled
            ]
            parts = [
                embedder.encode_queries(queries[start : start + options.query_batch])
                for start in range(0, len(queries), options.query_batch)
            ]
            if not queries:
                if progress is not None:
                    progress(len(block))
                continue
            vectors = np.concatenate(parts)
            top_scores, top_indices = searcher.search(vectors, min(depth, len(pool)))
            for (row, instruction), query, scores, indices in zip(
                labelled, queries, top_scores, top_indices, strict=True
            ):
                qid = str(row["qid"])
                wanted = relevant[qid]
                ranking = [pool.dids[i] for i in indices if i >= 0]
                result.queries += 1
                if not wanted & pool.ids:
                    result.no_relevant_in_pool += 1
                hit = metrics.hit_at_k(ranking, wanted, task.k)
                result.hits.append(hit)
                line: dict[str, Any] = {
                    "qid": qid,
                    "instruction": instruction,
                    "top": ranking[: task.k],
                    "hit": hit,
                }
                if reranker is not None and options.fusion_weights:
                    line["rerank"] = _rerank(
                        reranker, query, pool, layout, indices, scores, wanted, task, options
                    )
                    for weight, reranked_hit in line["rerank"].items():
                        result.rerank_hits.setdefault(weight, []).append(reranked_hit)
                out.write(json.dumps(line) + "\n")
            if progress is not None:  # after the search and the rerank of the block
                progress(len(block))
    os.replace(tmp, record)
    if not result.queries:  # reported as "—" and left out of the average
        log.warning(
            "no query of %s has a line in its qrels: are the files from one release?", task.name
        )
    return result


def _qid(row: dict[str, Any], task: Task) -> str:
    if "qid" not in row:
        raise InvalidRequest(f"a query of {task.name} has no qid: {str(row)[:120]}")
    return str(row["qid"])


def _rerank(
    reranker: Reranker,
    query: Query,
    pool: Pool,
    layout: Layout,
    indices: np.ndarray,
    cosines: np.ndarray,
    wanted: set[str],
    task: Task,
    options: RunOptions,
) -> dict[float, float]:
    from rerank.fusion import fuse
    from rerank.reranker import RerankCandidate, RerankQuery

    top = [int(i) for i in indices[: options.rerank_top] if i >= 0]
    rows = pool.rows(top)
    rq = RerankQuery(text=query.text, image=query.image, instruction=query.instruction)
    candidates = [candidate(row, layout) for row in rows]
    pairs = [(rq, RerankCandidate(text=c.text, image=c.image)) for c in candidates]
    p_yes = reranker.score_pairs(pairs)
    ids = [pool.dids[i] for i in top]
    hits = {}
    for weight in options.fusion_weights:
        fused = fuse(ids, cosines[: len(top)].tolist(), p_yes, weight)
        rest = [pool.dids[int(i)] for i in indices[len(top) :] if i >= 0]
        ranking = [h.document_id for h in fused] + rest
        hits[weight] = metrics.hit_at_k(ranking, wanted, task.k)
    return hits


def _instruction(
    row: dict[str, Any], task: Task, table: InstructionTable, options: RunOptions
) -> str:
    """The instruction for a query, from the dataset id in its qid ("9:42" -> 9)."""
    qid = str(row["qid"])
    dataset_id = qid.split(":", 1)[0]
    modality = row.get("query_modality") or _modality(row)
    seeded = options.instruction_seed is not None
    try:
        return table.pick(
            dataset_id,
            modality,
            task.candidate_modality,
            query_id=qid if seeded else None,
            seed=options.instruction_seed or 0,
        )
    except KeyError as exc:
        raise InvalidRequest(f"query_instructions.tsv: {exc.args[0]} (query {qid})") from None


def _modality(row: dict[str, Any]) -> str:
    parts = (["image"] if row.get("query_img_path") else []) + (
        ["text"] if row.get("query_txt") else []
    )
    return ",".join(parts)


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class RunConfig:
    root: Path
    tasks: list[Task]
    model: str
    output: Path
    cache_dir: Path
    image_root: Path | None = None
    pool: str = "local"  # or "global": the union pool for every task
    index: str = "exact"  # or "milvus"
    milvus_uri: str = ""
    rerank_model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    chunk_size: int = 1024
    options: RunOptions = field(default_factory=RunOptions)


def run(
    config: RunConfig,
    embedder: Embedder,
    reranker: Reranker | None = None,
    progress: Callable[[str, int], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every task of ``config``; per-query records go to ``config.output``.

    ``progress(label, total)`` returns a callable advanced by the items done.
    """
    layout = Layout(config.root, config.image_root)
    try:
        instructions = InstructionTable.load(layout.instructions())
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    config.output.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(config.model)
    pools: dict[Path, tuple[Pool, EmbeddingStore]] = {}
    index = MilvusIndex(config.milvus_uri) if config.index == "milvus" else None
    results = []
    try:
        for task in config.tasks:
            path = layout.global_pool() if config.pool == "global" else layout.local_pool(task)
            if path not in pools:
                pool = Pool(path)
                key = {
                    "model": fingerprint,
                    "pool": pool.sha256,
                    "image_only_suffix": embedder.config.image_only_suffix,
                    "dtype": str(embedder.dtype),
                }
                store = EmbeddingStore.open(config.cache_dir, key, config.chunk_size)
                advance = progress(f"embed {path.name}", len(pool)) if progress else None
                embed_pool(embedder, pool, store, layout, advance)
                pools[path] = (pool, store)
            pool, store = pools[path]
            searcher: Searcher = (
                MilvusSearcher(index, store, pool, embedder.dim)
                if index is not None
                else ExactSearcher(store, len(pool))
            )
            queries = layout.queries(task)
            advance = progress(f"query {task.name}", _count_lines(queries)) if progress else None
            record = config.output / f"{task.name}.queries.jsonl"
            results.append(
                evaluate_task(
                    task,
                    layout,
                    pool,
                    searcher,
                    embedder,
                    instructions,
                    config.options,
                    record,
                    reranker,
                    advance,
                )
            )
    finally:
        if index is not None:
            index.close()
    return summarise(config, results)


def summarise(config: RunConfig, results: Sequence[TaskResult]) -> dict[str, Any]:
    weights = config.options.fusion_weights if config.rerank_model else ()
    recalls = [r.recall for r in results if r.recall is not None]
    average: dict[str, Any] = {"recall": metrics.mean(recalls)}
    average["rerank"] = {
        str(w): metrics.mean([v for r in results if (v := r.rerank_recall(w)) is not None])
        for w in weights
    }
    # The published averages are local-pool numbers: beside a global-pool run they mislead.
    published = published_for(config.model) if config.pool == "local" else None
    return {
        "model": config.model,
        "rerank_model": config.rerank_model,
        "pool": config.pool,
        "index": config.index,
        "instruction_seed": config.options.instruction_seed,
        "rerank_top": config.options.rerank_top if weights else None,
        "complete": sum(1 for r in results if r.queries) == len(TASKS),
        "tasks": [r.as_dict() for r in results],
        "average": average,
        "published": {"name": published, **PUBLISHED[published]} if published else None,
    }


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())

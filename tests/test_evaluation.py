"""Evaluation: metric functions by hand, the M-BEIR harness on a synthetic M-BEIR dataset
with tiny real models, resume after interruption, outputs, and ``umarvel similarity``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from core.errors import InvalidRequest
from evaluation import mbeir, metrics, synthetic
from evaluation.store import EmbeddingStore, exact_top_k
from recall.embedder import Embedder
from recall.instructions import InstructionTable
from recall.prompts import Query

SETS = ["mscoco_task0", "webqa_task1", "fashion200k_task3", "cirr_task7"]


# -- metrics, by hand -----------------------------------------------------------------------
def test_rank_keeps_pool_order_on_ties() -> None:
    assert metrics.rank(["a", "b", "c", "d"], [0.5, 0.9, 0.5, 0.9]) == ["b", "d", "a", "c"]


def test_hit_at_k_is_m_beir_recall() -> None:
    ranking = ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert metrics.hit_at_k(ranking, {"d5", "d9"}, 5) == 1.0
    assert metrics.hit_at_k(ranking, {"d6"}, 5) == 0.0
    assert metrics.hit_at_k(ranking, {"d6"}, 10) == 1.0
    assert metrics.hit_at_k(ranking, set(), 5) == 0.0  # nothing relevant: a miss, not an error


def test_recall_mrr_and_ndcg_by_hand() -> None:
    ranking = ["a", "b", "c", "d"]
    assert metrics.recall_at_k(ranking, {"a", "c", "z"}, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(ranking, {"a", "c", "z"}, 4) == pytest.approx(2 / 3)
    assert metrics.reciprocal_rank(ranking, {"c", "d"}) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank(ranking, {"z"}) == 0.0
    # DCG = 1/log2(2) + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3).
    expected = 2 / (2 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(ranking, {"a": 1.0, "c": 2.0}, 10) == pytest.approx(expected)
    # A relevant document that was never returned still counts in the ideal ranking.
    assert metrics.ndcg_at_k(["a"], {"a": 1.0, "z": 1.0}, 10) == pytest.approx(
        1 / (1 + 1 / math.log2(3))
    )
    assert metrics.ndcg_at_k(["x", "a"], {"a": 1.0}, 1) == 0.0


def test_metrics_refuse_queries_without_relevant_ids() -> None:
    with pytest.raises(ValueError, match="relevant"):
        metrics.recall_at_k(["a"], set(), 5)
    with pytest.raises(ValueError, match="positive grade"):
        metrics.ndcg_at_k(["a"], {"a": 0.0}, 10)
    assert metrics.mean([]) is None
    assert metrics.mean([1.0, 0.0, 0.5]) == pytest.approx(0.5)


# -- the streamed exact search --------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_exact_top_k_streams_chunks_like_one_sort(tmp_path: Path, chunk: int) -> None:
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(23, 8)).astype(np.float32)
    pool[17] = pool[2]  # a tie across chunks: the lower pool index must come first
    store = EmbeddingStore(tmp_path / str(chunk), chunk)
    for c in range(store.chunks(len(pool))):
        start, stop = store.bounds(c, len(pool))
        store.write(c, pool[start:stop])
    queries = np.stack([pool[2], rng.normal(size=8).astype(np.float32)])
    scores, indices = exact_top_k(store, len(pool), queries, 5)
    for row in range(len(queries)):
        full = queries[row : row + 1] @ pool.T
        expected = np.lexsort((np.arange(len(pool)), -full[0]))[:5]
        np.testing.assert_array_equal(indices[row], expected)
        np.testing.assert_allclose(scores[row], full[0][expected], rtol=1e-6)
    assert list(indices[0][:2]) == [2, 17]


# -- files ----------------------------------------------------------------------------------
def test_qrels_keep_positive_rows_and_report_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("1:1 0 1:9 1 0\n1:1 0 1:8 0 0\n\n1:2 0 1:7 2 0\n")
    assert mbeir.read_qrels(path) == {"1:1": {"1:9"}, "1:2": {"1:7"}}
    path.write_text("1:1 0 1:9\n")
    with pytest.raises(InvalidRequest, match=r"q.txt:1"):
        mbeir.read_qrels(path)


def test_layout_finds_mscoco_test_pools_and_names_missing_files(tmp_path: Path) -> None:
    layout = mbeir.Layout(tmp_path)
    task = mbeir.TASKS_BY_NAME["mscoco_task3"]
    with pytest.raises(InvalidRequest, match=r"mbeir_mscoco_task3_cand_pool\.jsonl"):
        layout.local_pool(task)
    variant = tmp_path / "cand_pool" / "local" / "mbeir_mscoco_task3_test_cand_pool.jsonl"
    variant.parent.mkdir(parents=True)
    variant.write_text("")
    assert layout.local_pool(task) == variant
    with pytest.raises(InvalidRequest, match="unknown M-BEIR set"):
        mbeir.select_tasks(["mscoco"])
    assert [t.k for t in mbeir.TASKS].count(10) == 3  # Fashion200K both ways, FashionIQ
    assert len(mbeir.select_tasks([])) == 16


# -- the harness with tiny real models --------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.build(tmp_path_factory.mktemp("mbeir"), SETS)


@pytest.fixture(scope="module")
def embedder(tiny_models: dict[str, Path]) -> Embedder:
    return Embedder.from_pretrained(str(tiny_models["qwen3_vl"]), device="cpu")


class Counting:
    """The embedder, counting candidates; optionally interrupted after some calls."""

    def __init__(self, inner: Embedder, fail_after: int | None = None) -> None:
        self.inner, self.fail_after = inner, fail_after
        self.calls = self.encoded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_candidates(self, candidates: Any) -> np.ndarray:
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.encoded += len(candidates)
        return self.inner.encode_candidates(candidates)


def _config(dataset: Path, out: Path, model: str, **extra: Any) -> mbeir.RunConfig:
    return mbeir.RunConfig(
        root=dataset,
        tasks=mbeir.select_tasks(SETS),
        model=model,
        output=out,
        cache_dir=out / "cache",
        chunk_size=4,
        **extra,
    )


def _records(out: Path, task: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{task}.queries.jsonl").read_text().splitlines()]


def test_mbeir_run_matches_a_direct_computation(
    dataset: Path, embedder: Embedder, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_models["qwen3_vl"])
    summary = mbeir.run(_config(dataset, tmp_path, model), embedder)
    layout = mbeir.Layout(dataset)
    table = InstructionTable.load(layout.instructions())
    for task, result in zip(mbeir.select_tasks(SETS), summary["tasks"], strict=True):
        assert result["metric"] == f"R@{task.k}"
        # 6 queries: one without qrels (skipped), one whose relevant did is not in the pool.
        assert (result["queries"], result["skipped_no_qrels"]) == (5, 1)
        assert result["no_relevant_in_pool"] == 1
        pool = mbeir.Pool(layout.local_pool(task))
        vectors = embedder.encode_candidates(
            [mbeir.candidate(row, layout) for row in pool.rows(range(len(pool)))]
        )
        rows = {r["qid"]: r for r in mbeir.read_jsonl(layout.queries(task))}
        relevant = mbeir.read_qrels(layout.qrels(task))
        hits = []
        for record in _records(tmp_path, task.name):
            row = rows[record["qid"]]
            dataset_id = record["qid"].split(":")[0]
            assert record["instruction"] == table.pick(
                dataset_id, row["query_modality"], task.candidate_modality, record["qid"], 0
            )
            query = Query(
                text=row["query_txt"] or None,
                image=layout.image(row["query_img_path"]),
                instruction=record["instruction"],
            )
            scores = (embedder.encode_queries([query]) @ vectors.T)[0]
            ranking = metrics.rank(pool.dids, scores)
            assert record["top"] == ranking[: task.k]
            hits.append(metrics.hit_at_k(ranking, relevant[record["qid"]], task.k))
        assert result["recall"] == pytest.approx(100 * sum(hits) / len(hits))
    recalls = [t["recall"] for t in summary["tasks"]]
    assert summary["average"]["recall"] == pytest.approx(sum(recalls) / len(recalls))
    assert summary["complete"] is False


def test_an_interrupted_run_resumes_without_re_encoding(
    dataset: Path, embedder: Embedder, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_models["qwen3_vl"])
    config = _config(dataset, tmp_path / "a", model)
    pool_sizes = [len(mbeir.Pool(mbeir.Layout(dataset).local_pool(t))) for t in config.tasks]
    interrupted = Counting(embedder, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        mbeir.run(config, interrupted)  # type: ignore[arg-type]
    resumed = Counting(embedder)
    first = mbeir.run(config, resumed)  # type: ignore[arg-type]
    assert interrupted.encoded + resumed.encoded == sum(pool_sizes)
    assert resumed.encoded < sum(pool_sizes)
    again = Counting(embedder)
    assert mbeir.run(config, again) == first  # type: ignore[arg-type]
    assert again.encoded == 0
    # The same results as a run that never stopped, with its own cache.
    assert mbeir.run(_config(dataset, tmp_path / "b", model), embedder)["tasks"] == first["tasks"]


def test_rerank_fusion_weights(
    dataset: Path, embedder: Embedder, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from rerank.fusion import fuse
    from rerank.reranker import RerankCandidate, Reranker, RerankQuery

    reranker = Reranker.from_pretrained(str(tiny_models["qwen2_vl"]), device="cpu")
    options = mbeir.RunOptions(rerank_top=50, fusion_weights=(0.0, 100.0))
    config = _config(
        dataset, tmp_path, str(tiny_models["qwen3_vl"]), rerank_model="r", options=options
    )
    config.tasks = mbeir.select_tasks(["webqa_task1"])
    summary = mbeir.run(config, embedder, reranker)
    task = summary["tasks"][0]
    assert task["rerank"]["0.0"] == task["recall"]  # w = 0 keeps the cosine order
    assert set(summary["average"]["rerank"]) == {"0.0", "100.0"}
    # w = 100: recompute each query's fused order from the two models directly.
    layout = mbeir.Layout(dataset)
    pool = mbeir.Pool(layout.local_pool(config.tasks[0]))
    pool_rows = pool.rows(range(len(pool)))
    vectors = embedder.encode_candidates([mbeir.candidate(r, layout) for r in pool_rows])
    candidates = [RerankCandidate(text=r["txt"]) for r in pool_rows]
    rows = {r["qid"]: r for r in mbeir.read_jsonl(layout.queries(config.tasks[0]))}
    relevant = mbeir.read_qrels(layout.qrels(config.tasks[0]))
    for record in _records(tmp_path, "webqa_task1"):
        text, instruction = rows[record["qid"]]["query_txt"], record["instruction"]
        cosines = embedder.encode_queries([Query(text=text, instruction=instruction)]) @ vectors.T
        p_yes = reranker.score(RerankQuery(text=text, instruction=instruction), candidates)
        fused = [h.document_id for h in fuse(pool.dids, cosines[0], p_yes, 100.0)]
        assert record["rerank"]["100.0"] == metrics.hit_at_k(fused, relevant[record["qid"]], 5)


def test_global_pool_and_milvus_index(
    dataset: Path,
    embedder: Embedder,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    milvus_server: dict[str, Any],
) -> None:
    model = str(tiny_models["qwen3_vl"])
    exact = mbeir.run(_config(dataset, tmp_path / "exact", model, pool="global"), embedder)
    assert {t["pool"] for t in exact["tasks"]} == {"mbeir_union_test_cand_pool.jsonl"}
    config = _config(
        dataset,
        tmp_path / "milvus",
        model,
        pool="global",
        index="milvus",
        milvus_uri=str(milvus_server["uri"]),
    )
    through_milvus = mbeir.run(config, embedder)

    # HNSW on 36 vectors finds the exact neighbours. The global pool holds the same text
    # under two ids (one per source pool): those tie exactly, and either engine may list
    # either first, so rankings are compared by content.
    def image(path: str | None) -> str | None:  # the same picture is stored per task
        return hashlib.sha256((dataset / path).read_bytes()).hexdigest() if path else None

    content = {
        row["did"]: (row["txt"], image(row["img_path"]))
        for line in (dataset / "cand_pool" / "global" / exact["tasks"][0]["pool"])
        .read_text()
        .splitlines()
        if (row := json.loads(line))
    }
    tie_broken = False
    for task in mbeir.select_tasks(SETS):
        pairs = zip(
            _records(tmp_path / "exact", task.name),
            _records(tmp_path / "milvus", task.name),
            strict=True,
        )
        for by_exact, by_milvus in pairs:
            assert [content[d] for d in by_milvus["top"]] == [content[d] for d in by_exact["top"]]
            tie_broken |= by_milvus["top"] != by_exact["top"]
    if not tie_broken:
        assert through_milvus["average"] == exact["average"]


def test_cli_writes_table_json_and_chart(
    dataset: Path, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["eval", "mbeir", str(dataset), "--model", str(tiny_models["qwen3_vl"])]
    args += ["--device", "cpu", "--output", str(out), "--first-instruction"]
    for name in SETS:
        args += ["--task", name]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["instruction_seed"] is None
    text = (out / "results.txt").read_text()
    lines = text.splitlines()
    assert lines[1].split()[:5] == ["Task", "Dataset", "Metric", "Queries", "Ours"]
    for task in summary["tasks"]:
        row = next(line for line in lines if task["dataset"] in line and task["task"] in line)
        assert row.split()[-1] == f"{task['recall']:.1f}"
    assert lines[-1].split()[-1] == f"{summary['average']['recall']:.1f}"
    assert "Average of 4 sets" in text
    assert text in result.output
    with Image.open(out / "results.png") as image:
        assert image.format == "PNG"
        assert image.width > 400
    # Every recorded instruction is the table's first for its set.
    table = InstructionTable.load(mbeir.Layout(dataset).instructions())
    for record in _records(out, "cirr_task7"):
        assert record["instruction"] == table.choices("9", "image,text", "image")[0]


def test_cli_reports_bad_input_without_a_traceback(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    result = CliRunner().invoke(main, ["eval", "mbeir", str(tmp_path), "--task", "nope"])
    assert result.exit_code != 0
    assert "unknown M-BEIR set(s) nope" in result.output
    assert "Traceback" not in result.output
    # A dataset whose instruction table lacks the set's row, and a broken pool line.
    root = synthetic.build(tmp_path / "mbeir", ["webqa_task1"])
    tsv = root / "instructions" / "query_instructions.tsv"
    tsv.write_text(tsv.read_text().splitlines()[0] + "\n")
    args = ["eval", "mbeir", str(root), "--task", "webqa_task1", "--device", "cpu"]
    args += ["--model", str(tiny_models["qwen3_vl"]), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "no instruction for dataset 3, text -> text" in result.output
    pool = root / "cand_pool" / "local" / "mbeir_webqa_task1_cand_pool.jsonl"
    pool.write_text(pool.read_text() + "{not json\n")
    result = CliRunner().invoke(main, args)
    assert "mbeir_webqa_task1_cand_pool.jsonl:10: not a candidate row" in result.output


def test_published_numbers_appear_for_u_marvel_checkpoints() -> None:
    assert mbeir.published_for("TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct") == "U-MARVEL-Qwen3VL-4B"
    assert mbeir.published_for("/models/u-marvel-qwen2vl-7b") == "U-MARVEL-Qwen2VL-7B"
    assert mbeir.published_for("/tmp/tiny/qwen3_vl") is None


def test_similarity_prints_the_cosine_matrix(
    embedder: Embedder, tiny_models: dict[str, Path], dataset: Path
) -> None:
    image = dataset / "mbeir_images" / "cirr_images" / "cirr_task7" / "cand_1.png"
    candidates = ["a red square", str(image), f"{image}::a red triangle"]
    args = ["similarity", "--model", str(tiny_models["qwen3_vl"]), "--device", "cpu"]
    args += ["--query-text", "a red square", "--instruction", "Find a matching image."]
    result = CliRunner().invoke(main, [*args, "--candidates", *candidates])
    assert result.exit_code == 0, result.output
    printed = [float(v) for v in result.output.strip().splitlines()[-1].split()[-3:]]
    from evaluation.similarity import cosine_matrix

    query = Query(text="a red square", instruction="Find a matching image.")
    expected = cosine_matrix(embedder, [query], candidates)[0]
    np.testing.assert_allclose(printed, expected, atol=1e-4)
    assert "cand_1.png + a red triangle" in result.output
    missing = CliRunner().invoke(main, ["similarity", "--candidates", "x"])
    assert missing.exit_code != 0
    assert "give --query-text" in missing.output


def test_published_averages_only_beside_local_pool_runs(tmp_path: Path) -> None:
    config = mbeir.RunConfig(
        root=tmp_path,
        tasks=[],
        model="TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct",
        output=tmp_path,
        cache_dir=tmp_path,
    )
    assert mbeir.summarise(config, [])["published"]["recall"] == 58.8
    config.pool = "global"
    assert mbeir.summarise(config, [])["published"] is None


def test_labelled_queries_file_errors_and_zero_grades(tmp_path: Path) -> None:
    from evaluation import collection

    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"query": "x", "relevant": {"a": 2, "b": 0}}) + "\n")
    (item,) = collection.read_queries(path)
    assert item.relevant == {"a": 2.0}  # a grade of 0 is judged non-relevant
    path.write_text('{"query": "x"}\n')
    with pytest.raises(InvalidRequest, match=r"q.jsonl:1: needs 'query' and 'relevant'"):
        list(collection.read_queries(path))
    path.write_text('{"query": {"image_path": "missing.png"}, "relevant": ["a"]}\n')
    with pytest.raises(InvalidRequest, match="cannot read"):
        list(collection.read_queries(path))
    path.write_text(json.dumps({"query": "x", "relevant": ["a"]}) + "\n")
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "collection",
            "c",
            "--queries",
            str(path),
            "--key",
            "k",
            "--api",
            "http://127.0.0.1:9",
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    assert "cannot reach the API at http://127.0.0.1:9" in result.output
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1:1 0 1:2 yes 0\n")
    with pytest.raises(InvalidRequest, match="relevance 'yes' is not a number"):
        mbeir.read_qrels(qrels)

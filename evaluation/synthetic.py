"""A small dataset in exactly M-BEIR's published layout, generated on the fly.

Images are coloured shapes; captions name them. Each labelled query has one positive in
its task's local pool. Two extra queries per task exercise the edge cases: one without any
qrels line (skipped) and one whose only relevant did is not in the pool (a sure miss).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from devkit.samples import COLOURS, SHAPES, shape_image
from evaluation.mbeir import TASKS_BY_NAME

DATASET_IDS = {
    "visualnews": 0,
    "mscoco": 1,
    "fashion200k": 2,
    "webqa": 3,
    "edis": 4,
    "nights": 5,
    "oven": 6,
    "infoseek": 7,
    "fashioniq": 8,
    "cirr": 9,
}


def _query_modality(kind: str) -> str:
    side = kind.split("→")[0]
    return {"qt": "text", "qi": "image", "(qi,qt)": "image,text"}[side]


def build(root: Path, tasks: list[str], pool_size: int = 9, queries: int = 4) -> Path:
    """Write the files for ``tasks`` under ``root`` and return ``root``."""
    for folder in ("query/test", "cand_pool/local", "cand_pool/global", "qrels/test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "instructions").mkdir(exist_ok=True)
    union: list[dict[str, object]] = []
    tsv = ["query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3"]
    things = list(itertools.product(COLOURS, SHAPES))
    for name in tasks:
        task = TASKS_BY_NAME[name]
        dataset = name.split("_")[0]
        dataset_id = DATASET_IDS[dataset]
        images = root / "mbeir_images" / f"{dataset}_images" / name
        images.mkdir(parents=True, exist_ok=True)
        pool = []
        for n in range(pool_size):
            colour, shape = things[n % len(things)]
            did = f"{dataset_id}:{name[-1]}{n:04d}"  # unique across sets, as in the union pool
            row: dict[str, object] = {"did": did, "modality": task.candidate_modality}
            row["txt"] = f"A {colour} {shape}." if "text" in task.candidate_modality else ""
            row["img_path"] = None
            if "image" in task.candidate_modality:
                path = images / f"cand_{n}.png"
                path.write_bytes(shape_image(colour, shape, size=40 + 4 * n))
                row["img_path"] = str(path.relative_to(root))
            pool.append(row)
        _write_jsonl(root / "cand_pool/local" / f"mbeir_{name}_cand_pool.jsonl", pool)
        union.extend(pool)
        query_modality = _query_modality(task.kind)
        rows, qrels = [], []
        for n in range(queries + 2):
            colour, shape = things[(n * 2) % len(things)]
            qid = f"{dataset_id}:{n}"
            row = {
                "qid": qid,
                "query_modality": query_modality,
                "query_txt": "",
                "query_img_path": None,
                "task_id": int(name[-1]),
            }
            if "text" in query_modality:
                row["query_txt"] = f"the {colour} {shape}"
            if "image" in query_modality:
                path = images / f"query_{n}.png"
                path.write_bytes(shape_image(colour, shape, size=48))
                row["query_img_path"] = str(path.relative_to(root))
            positive = pool[(n * 2) % pool_size]["did"]
            row["pos_cand_list"] = [positive]
            rows.append(row)
            if n == queries:  # no qrels line at all: skipped
                continue
            relevant = f"{dataset_id}:99999" if n == queries + 1 else positive
            qrels.append(f"{qid} 0 {relevant} 1 {int(name[-1])}")
        _write_jsonl(root / "query/test" / f"mbeir_{name}_test.jsonl", rows)
        (root / "qrels/test" / f"mbeir_{name}_test_qrels.txt").write_text("\n".join(qrels) + "\n")
        modality = task.candidate_modality
        prompts = [f"Retrieve a {modality} match ({dataset}, variant {v})." for v in range(3)]
        tsv.append("\t".join([query_modality, modality, dataset, str(dataset_id), *prompts]))
    _write_jsonl(root / "cand_pool/global/mbeir_union_test_cand_pool.jsonl", union)
    (root / "instructions/query_instructions.tsv").write_text("\n".join(tsv) + "\n")
    return root


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")

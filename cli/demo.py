"""``umarvel demo``: the whole product on the embedded defaults, start to finish."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from cli.stack import Stack, free_port
from devkit.samples import sample_documents, sample_queries
from umarvel_client import Client

TINY_WARNING = (
    "NOTE: these are tiny models with RANDOM weights, built offline: the rankings below are\n"
    "meaningless. For real results run the same command on the real checkpoints:\n"
    "  umarvel demo --recall-model TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct \\\n"
    "               --rerank-model Qwen/Qwen3-VL-4B-Instruct"
)

QUERIES = sample_queries()


def run_demo(workdir: Path, models: Path, recall_model: str | None, rerank: str | None) -> int:
    tiny = recall_model is None
    if recall_model is None:
        from devkit.tiny_models import build_all

        click.echo(f"building tiny models in {models} ...")
        recall_model = str(build_all(models)["qwen3_vl"].resolve())
    rerank = rerank or recall_model
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = {
        "UMARVEL_DATABASE_URL": f"sqlite:///{(workdir / 'umarvel.db').resolve()}",
        "UMARVEL_MEDIA_ROOT": str((workdir / "media").resolve()),
        "UMARVEL_MILVUS_URI": f"http://127.0.0.1:{free_port()}",
        "UMARVEL_MILVUS_PREFIX": "demo_",
        "UMARVEL_RECALL_MODEL": recall_model,
        "UMARVEL_RERANK_MODEL": rerank,
        "UMARVEL_TORCH_THREADS": "1",
    }
    click.echo("starting milvus-lite, the recall and rerank workers and the API ...")
    try:
        stack = Stack(workdir, env).start()
    except RuntimeError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    try:
        key = stack.create_key(("admin",))
        _run(stack.api_url, key, tiny)
        _evaluate(stack.api_url, key, workdir / "eval")
    finally:
        click.echo("stopping the stack ...")
        stack.stop()
    return 0


def _run(url: str, key: str, tiny: bool) -> None:
    api = Client(url, key)
    api.collections.create("demo", description="shapes")
    docs = sample_documents()
    click.echo(f"ingesting {len(docs)} documents ...")
    summary = api.documents.ingest("demo", docs)
    state = "done" if all(job.state == "done" for job in summary.jobs) else "failed"
    click.echo(f"ingestion {state}: {summary.done} indexed, {summary.failed} failed")
    if tiny:
        click.echo("\n" + TINY_WARNING)
    for label, query, _ in QUERIES:
        started = time.perf_counter()
        result = api.search("demo", **query, top_k=5, wait=30)
        elapsed = time.perf_counter() - started
        shown = {k: v for k, v in query.items() if k != "image"}
        has_image = " + image" if "image" in query else ""
        click.echo(f"\n{label} query {shown}{has_image}: {result.status} in {elapsed:.2f} s")
        click.echo(f"  {'rank':>4}  {'document':<16} {'cosine':>8} {'p_yes':>7} {'score':>8}")
        for hit in result.hits:
            p_yes = "-" if hit.p_yes is None else f"{hit.p_yes:.4f}"
            click.echo(
                f"  {hit.rank:>4}  {hit.document_id:<16} {hit.cosine:>8.4f} {p_yes:>7} "
                f"{hit.score:>8.4f}"
            )


def _evaluate(url: str, key: str, out: Path) -> None:
    """The three queries again, labelled, through ``umarvel eval collection``'s code."""
    from cli.evaluate import write_outputs
    from evaluation import collection

    labelled = [
        collection.Labelled(n, query, {relevant: 1.0})
        for n, (_, query, relevant) in enumerate(QUERIES, start=1)
    ]
    click.echo("\nquality of the three queries, labelled (umarvel eval collection):")
    summary = collection.evaluate(Client(url, key), "demo", labelled)
    write_outputs(out, summary, collection.table(summary), collection.chart)

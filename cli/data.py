"""``umarvel`` commands about data and models: ingestion from files, evaluation, the
similarity demo, the embedded demo, tiny models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.remote import api_options, client_for


@click.command("tiny-models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def tiny_models(out_dir: Path, seed: int) -> None:
    """Build tiny random Qwen2-VL and Qwen3-VL checkpoints in OUT_DIR/<arch>."""
    from devkit.tiny_models import build_all

    for arch, path in build_all(out_dir, seed=seed).items():
        click.echo(f"{arch}: {path}")


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--collection", required=True, help="Target collection (it must exist).")
@api_options
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Progress file for resuming (default: SOURCE.ingest-state.json).",
)
@click.option("--no-wait", is_flag=True, help="Return once every batch is queued.")
@click.option("--json", "as_json", is_flag=True, help="The totals and errors as one JSON object.")
def ingest(
    source: Path,
    collection: str,
    api: str,
    key: str,
    batch_size: int,
    state_path: Path | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Ingest a folder of images and videos (captions in <stem>.txt) or a JSONL manifest,
    resumably; batches stay under 48 MiB of media.

    Exits 1 when any document failed (each failure is listed)."""
    import json

    from cli.ingest import run_ingest

    state = state_path or source.with_name(source.name + ".ingest-state.json")
    summary = run_ingest(
        source, collection, client_for(api, key), batch_size, state, wait=not no_wait
    )
    errors = [{"index": e.index, "id": e.id, "message": e.message} for e in summary.errors]
    if as_json:
        totals = {"total": summary.total, "done": summary.done, "failed": summary.failed}
        click.echo(json.dumps({**totals, "jobs": [j.id for j in summary.jobs], "errors": errors}))
    else:
        for error in errors:
            click.echo(f"failed: {error['id'] or error['index']}: {error['message']}", err=True)
        click.echo(f"{summary.done} indexed, {summary.failed} failed of {summary.total}")
    if summary.failed:
        raise SystemExit(1)


@click.group("eval")
def eval_group() -> None:
    """Measure retrieval quality: M-BEIR, or labelled queries on your own collection."""


@eval_group.command("mbeir")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--task",
    "tasks",
    multiple=True,
    help="An M-BEIR set such as mscoco_task0; repeat for several (default: all 16).",
)
@click.option("--model", default=None, help="Embedding checkpoint [UMARVEL_RECALL_MODEL].")
@click.option("--pool", type=click.Choice(["local", "global"]), default="local", show_default=True)
@click.option("--index", type=click.Choice(["exact", "milvus"]), default="exact", show_default=True)
@click.option("--milvus-uri", default=None, help="Milvus for --index milvus [UMARVEL_MILVUS_URI].")
@click.option("--rerank-model", default=None, help="Rerank the top of each list with this model.")
@click.option(
    "--fusion-weight",
    "weights",
    multiple=True,
    type=float,
    help="w in cosine + w * P(Yes); repeat to compare weights (default 0.1).",
)
@click.option("--rerank-top", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--instruction-seed",
    default=0,
    show_default=True,
    type=int,
    help="Seeds the per-query pick among a dataset's instructions.",
)
@click.option("--first-instruction", is_flag=True, help="Always the table's first instruction.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--output", type=click.Path(file_okay=False, path_type=Path), default=Path(".umarvel/eval")
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Pool embeddings kept between runs (default: OUTPUT/cache).",
)
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--device", default=None, help="[UMARVEL_DEVICE]")
@click.option("--dtype", default=None, help="[UMARVEL_DTYPE]")
def eval_mbeir(
    root: Path,
    tasks: tuple[str, ...],
    model: str | None,
    pool: str,
    index: str,
    milvus_uri: str | None,
    rerank_model: str | None,
    weights: tuple[float, ...],
    rerank_top: int,
    instruction_seed: int,
    first_instruction: bool,
    image_root: Path | None,
    output: Path,
    cache_dir: Path | None,
    chunk_size: int,
    device: str | None,
    dtype: str | None,
) -> None:
    """Recall@k on the M-BEIR test sets under ROOT, laid out like the paper's table."""
    from cli.evaluate import ProgressBars, write_outputs
    from core.settings import get_settings
    from evaluation import mbeir, report
    from recall.embedder import Embedder

    settings = get_settings()
    config = mbeir.RunConfig(
        root=root,
        tasks=mbeir.select_tasks(tasks),
        model=model or settings.recall_model,
        output=output,
        cache_dir=cache_dir or output / "cache",
        image_root=image_root,
        pool=pool,
        index=index,
        milvus_uri=milvus_uri or settings.milvus_uri,
        rerank_model=rerank_model,
        chunk_size=chunk_size,
        options=mbeir.RunOptions(
            rerank_top=rerank_top,
            fusion_weights=(weights or (0.1,)) if rerank_model else (),
            instruction_seed=None if first_instruction else instruction_seed,
        ),
    )
    device, dtype = device or settings.device, dtype or settings.dtype
    embedder = Embedder.from_pretrained(config.model, device=device, dtype=dtype)
    reranker = None
    if rerank_model:
        from rerank.reranker import Reranker

        reranker = Reranker.from_pretrained(rerank_model, device=device, dtype=dtype)
    bars = ProgressBars()
    try:
        summary = mbeir.run(config, embedder, reranker, progress=bars)
    finally:
        bars.close()
    write_outputs(output, summary, report.mbeir_table(summary), report.mbeir_chart)


@eval_group.command("sample-mbeir")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", "tasks", multiple=True, help="Sets to generate (default: all 16).")
@click.option("--pool-size", default=9, show_default=True, type=click.IntRange(1, 10_000))
def eval_sample_mbeir(root: Path, tasks: tuple[str, ...], pool_size: int) -> None:
    """Write a small synthetic dataset in M-BEIR's layout to ROOT (to try the harness)."""
    from evaluation import mbeir, synthetic

    names = [t.name for t in mbeir.select_tasks(tasks)]
    synthetic.build(root, names, pool_size=pool_size)
    click.echo(f"wrote {len(names)} M-BEIR sets to {root}")


def _video_eval(dataset: str) -> Any:
    """``umarvel eval msrvtt`` and ``umarvel eval msvd``: one command each, one body."""

    summary = (
        f"R@1/5/10 text -> video (and video -> text) on the {VIDEO_SETS[dataset]} test set "
        "under ROOT, as U-MARVEL's zero-shot evaluation measures it."
    )

    @eval_group.command(dataset, help=summary)
    @click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--model", default=None, help="Embedding checkpoint [UMARVEL_RECALL_MODEL].")
    @click.option(
        "--frames",
        type=click.Choice(["reference", "sampled"]),
        default="reference",
        show_default=True,
        help="Qwen3-VL: the reference path's 4 re-sampled frames, or every sampled frame.",
    )
    @click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None)
    @click.option("--device", default=None, help="[UMARVEL_DEVICE]")
    @click.option("--dtype", default=None, help="[UMARVEL_DTYPE]")
    def command(
        root: Path,
        model: str | None,
        frames: str,
        output: Path | None,
        device: str | None,
        dtype: str | None,
    ) -> None:
        from cli.evaluate import ProgressBars, write_outputs
        from core.settings import get_settings
        from evaluation import video
        from mllm.video_inputs import VideoFrames
        from recall.embedder import Embedder, EmbedderConfig

        settings = get_settings()
        try:
            videos = video.READERS[dataset](root)
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        config = EmbedderConfig(video_frames=VideoFrames(frames), video_nframes=videos.nframes)
        embedder = Embedder.from_pretrained(
            model or settings.recall_model,
            device=device or settings.device,
            dtype=dtype or settings.dtype,
            config=config,
        )
        bars = ProgressBars()
        try:
            summary = video.evaluate(embedder, videos, progress=bars)
        finally:
            bars.close()
        summary["frames"] = frames
        out = output or Path(".umarvel/eval") / dataset
        write_outputs(out, summary, video.table(summary), video.chart)

    return command


VIDEO_SETS = {"msrvtt": "MSR-VTT 1k-A", "msvd": "MSVD"}
eval_msrvtt = _video_eval("msrvtt")
eval_msvd = _video_eval("msvd")


@eval_group.command("sample-video")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layout", type=click.Choice(["msrvtt", "msvd"]), required=True)
@click.option("--videos", default=6, show_default=True, type=click.IntRange(2, 1000))
def eval_sample_video(root: Path, layout: str, videos: int) -> None:
    """Write a small set of generated clips and captions in MSR-VTT's or MSVD's layout."""
    from evaluation import video

    video.write_sample(root, layout, videos=videos)
    click.echo(f"wrote {videos} clips in {layout}'s layout to {root}")


@eval_group.command("collection")
@click.argument("name")
@click.option(
    "--queries",
    "queries_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL: {"query": ..., "relevant": [ids]} per line.',
)
@api_options
@click.option("--k", "ks", multiple=True, type=click.IntRange(1, 1000), help="Default 1, 5, 10.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Default: .umarvel/eval/NAME.",
)
def eval_collection(
    name: str, queries_file: Path, api: str, key: str, ks: tuple[int, ...], output: Path | None
) -> None:
    """Recall@k, MRR and nDCG@10 of labelled queries, without and with rerank."""
    from cli.evaluate import ProgressBars, write_outputs
    from evaluation import collection

    queries = list(collection.read_queries(queries_file))
    bars = ProgressBars()
    try:
        summary = collection.evaluate(
            client_for(api, key),
            name,
            queries,
            tuple(sorted(set(ks))) or (1, 5, 10),
            progress=bars(f"queries {name}", len(queries)),
        )
    finally:
        bars.close()
    out = output or Path(".umarvel/eval") / name
    write_outputs(out, summary, collection.table(summary), collection.chart)


@click.command()
@click.option("--model", default=None, help="Embedding checkpoint [UMARVEL_RECALL_MODEL].")
@click.option("--query-text", default=None)
@click.option("--query-image", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--instruction", default=None, help="What to find (the query's instruction).")
@click.option(
    "--candidates",
    "candidates_flag",
    is_flag=True,
    help="Then the candidates: texts, image files, or IMAGE::TEXT pairs.",
)
@click.argument("candidates", nargs=-1, required=True)
@click.option("--device", default=None, help="[UMARVEL_DEVICE]")
@click.option("--dtype", default=None, help="[UMARVEL_DTYPE]")
def similarity(
    model: str | None,
    query_text: str | None,
    query_image: str | None,
    instruction: str | None,
    candidates_flag: bool,
    candidates: tuple[str, ...],
    device: str | None,
    dtype: str | None,
) -> None:
    """Print the cosine between a query and each candidate (U-MARVEL's demo)."""
    from core.settings import get_settings
    from evaluation.similarity import cosine_matrix, render
    from recall.embedder import Embedder
    from recall.prompts import Query

    if query_text is None and query_image is None:
        raise click.UsageError("give --query-text, --query-image or both")
    settings = get_settings()
    embedder = Embedder.from_pretrained(
        model or settings.recall_model,
        device=device or settings.device,
        dtype=dtype or settings.dtype,
    )
    query = Query(text=query_text, image=query_image, instruction=instruction)
    label = " + ".join(p for p in (query_image and Path(query_image).name, query_text) if p)
    matrix = cosine_matrix(embedder, [query], candidates)
    click.echo(render(matrix, [label], candidates))


@click.command()
@click.option("--workdir", default=".umarvel/demo", show_default=True, type=click.Path())
@click.option(
    "--models",
    default=".umarvel/tiny-models",
    show_default=True,
    type=click.Path(),
    help="Where the tiny models are built when no real checkpoint is given.",
)
@click.option("--recall-model", default=None, help="U-MARVEL checkpoint (hub id or folder).")
@click.option("--rerank-model", default=None, help="Reranker checkpoint (hub id or folder).")
def demo(workdir: str, models: str, recall_model: str | None, rerank_model: str | None) -> None:
    """Start the embedded stack, ingest a sample collection, run three queries, stop."""
    from cli.demo import run_demo

    sys.exit(run_demo(Path(workdir), Path(models), recall_model, rerank_model))


COMMANDS = [tiny_models, ingest, eval_group, similarity, demo]

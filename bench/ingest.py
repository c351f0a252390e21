"""Ingestion throughput through the whole path against raw batched encoding, in one run.

    python -m bench.ingest [--documents 1000] [--kind mixed|text] [--raw-sample 2000]

Writes a JSONL manifest of generated documents (mixed: a third text, a third image, a third
image+text), ingests it with ``umarvel ingest`` (CLI -> API -> queue -> embed -> Milvus ->
SQL) and encodes the same documents in-process (the first ``--raw-sample`` of them: a rate
needs no more), in one call and in the workers' pieces two calls side by side.
Prints documents/s of each and the whole path's ratio to the faster (target >= 0.8); when the jobs
were created, started and finished; the CPU time per document of every process (the
servers' and the CLI's too) against the raw encoding's, which bounds the ratio on a machine
whose cores they all share; and the peak memory of each process, which stays flat with the
manifest's length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.common import rate, sample_items
from bench.processes import cpu_seconds, peak_mb
from cli.stack import Stack, free_port
from core.settings import Settings
from devkit.samples import b64
from devkit.tiny_models import build_all
from mllm.loading import load_backbone
from recall import Candidate, Embedder
from recall.embedder import EmbedderConfig
from workers.runtime import PIECE_BATCHES, Runtime, cpu_cores

REDIS_URL = "redis://127.0.0.1:6379/14"
# Runs `umarvel ARGS...` and prints its own peak resident memory on the way out (VmHWM:
# getrusage's ru_maxrss would report this benchmark's own peak, inherited across exec).
PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('PEAK_KB', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['umarvel', *sys.argv[1:]]\n"
    "runpy.run_module('cli.main', run_name='__main__')\n"
)


def _timeline(
    stack: Stack, collection: str, started: float, elapsed: float
) -> list[tuple[str, float]]:
    """When the collection's first job was created and started, its last one created and
    finished, and the CLI exited: seconds after it started (the jobs' own timestamps)."""
    from sqlalchemy import func, select

    from store.db import make_engine
    from store.tables import Collection, IngestJob

    engine = make_engine(stack.settings().database_url)
    try:
        with engine.connect() as connection:
            first, last, begun, ended = connection.execute(
                select(
                    func.min(IngestJob.created_at),
                    func.max(IngestJob.created_at),
                    func.min(IngestJob.started_at),
                    func.max(IngestJob.finished_at),
                )
                .join(Collection, Collection.id == IngestJob.collection_id)
                .where(Collection.name == collection)
            ).one()
    finally:
        engine.dispose()

    def since(moment: Any) -> float:
        if isinstance(moment, str):  # SQLite hands back text
            moment = datetime.fromisoformat(moment)
        return moment.replace(tzinfo=moment.tzinfo or UTC).timestamp() - started

    return [
        ("first job created", since(first)),
        ("first chunk started", since(begun)),
        ("last job created", since(last)),
        ("last job finished", since(ended)),
        ("CLI exited", elapsed),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--kind", choices=["mixed", "text"], default="mixed")
    parser.add_argument("--raw-sample", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500, help="the CLI's --batch-size")
    parser.add_argument("--chunk-size", type=int, default=None, help="UMARVEL_INGEST_CHUNK_SIZE")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    args = parser.parse_args()
    model = str(build_all(args.models)["qwen3_vl"].resolve())
    redis.Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.jsonl"
        # Written in slices: the bench itself never holds the whole input either.
        with open(manifest, "w") as handle:
            for start in range(0, args.documents, 1000):
                count = min(1000, args.documents - start)
                for i, (text, image) in enumerate(sample_items(count, args.kind), start=start):
                    doc: dict[str, str] = {"id": f"d{i}"}
                    if text is not None:
                        doc["text"] = text
                    if image is not None:
                        doc["image"] = b64(image)
                    handle.write(json.dumps(doc) + "\n")
        env = {
            "UMARVEL_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
            "UMARVEL_REDIS_URL": REDIS_URL,
            "UMARVEL_MILVUS_URI": f"http://127.0.0.1:{free_port()}",
            "UMARVEL_MEDIA_ROOT": f"{tmp}/media",
            "UMARVEL_RECALL_MODEL": model,
            "UMARVEL_RERANK_MODEL": model,
        }
        if args.chunk_size:
            env["UMARVEL_INGEST_CHUNK_SIZE"] = str(args.chunk_size)
        with Stack(Path(tmp), env) as stack:
            stack.wait_ready()  # time the path, not the model loading
            key = stack.create_key(("admin",))
            import requests

            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {key}"
            # A name of its own: a --database-url may hold earlier runs' collections.
            name = f"bench_{int(time.time())}"
            http.post(f"{stack.api_url}/v1/collections", json={"name": name}).raise_for_status()
            cpu_before = cpu_seconds(stack)
            started, wall_started = time.perf_counter(), time.time()
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PEAK_WRAPPER,
                    "ingest",
                    str(manifest),
                    "--collection",
                    name,
                    "--api",
                    stack.api_url,
                    "--key",
                    key,
                    "--batch-size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            elapsed = time.perf_counter() - started
            served = args.documents / elapsed
            cpu = {
                process: (seconds - cpu_before[process]) / args.documents * 1000
                for process, seconds in cpu_seconds(stack).items()
            }
            cli_peak = int(result.stderr.rsplit("PEAK_KB ", 1)[1].split()[0]) / 1024
            print(result.stdout.strip().splitlines()[-1])
            peaks = {name: peak_mb(proc.pid) for name, proc in stack.processes.items()}
            timeline = _timeline(stack, name, wall_started, elapsed)
        sample = sample_items(min(args.documents, args.raw_sample), args.kind)
        raws = _raw_rates(model, [Candidate(text, image) for text, image in sample])
    print(f"{args.documents} documents ({args.kind}), tiny qwen3_vl, 2-core CPU")
    best = max(docs_per_s for docs_per_s, _ in raws.values())
    print(
        f"whole path {served:.1f} docs/s vs raw batched encoding {raws['one call'][0]:.1f} "
        "docs/s in one call "
        f"on torch's threads, {raws['side by side'][0]:.1f} in two calls side by side "
        f"(each on half the cores, as the workers run them): {served / best:.2f}x of the faster "
        "(target >= 0.8)"
    )
    print("timeline, s after the CLI started: " + ", ".join(f"{k} {v:.1f}" for k, v in timeline))
    total = sum(cpu.values())
    shown = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu.items())
    print(f"CPU ms per document, by process: {shown}; total {total:.2f}")
    cores = cpu_cores()
    print(
        "    raw encoding, CPU ms per document: "
        + ", ".join(f"{name} {ms:.2f}" for name, (_, ms) in raws.items())
        + f"; sharing {cores} cores, the whole path's CPU alone caps it at "
        f"{min(1.0, cores / total * 1000 / best):.2f}x of the faster raw"
    )
    print(
        f"peak memory: CLI {cli_peak:.0f} MiB, "
        + ", ".join(f"{name} {mb:.0f} MiB" for name, mb in peaks.items())
    )


def _raw_rates(model: str, candidates: list[Candidate]) -> dict[str, tuple[float, float]]:
    """Documents/s and CPU ms per document of the plain library call: all of ``candidates``
    in one ``encode_candidates`` call on torch's threads, and in pieces (the workers') with
    two calls side by side (the workers' default), each on half the cores."""
    import torch

    loaded = load_backbone(model, device="cpu")
    workers = Runtime(Settings(device="cpu"))  # the workers' defaults, resolved here
    threads, runners = torch.get_num_threads(), workers.runners
    embedder = Embedder(loaded)
    side_by_side = Embedder(loaded, EmbedderConfig(concurrent_calls=runners))
    piece = workers.settings.embed_batch_size * PIECE_BATCHES
    pieces = [candidates[i : i + piece] for i in range(0, len(candidates), piece)]

    def in_pieces() -> None:
        with ThreadPoolExecutor(runners) as pool:
            list(pool.map(side_by_side.encode_candidates, pieces))

    rates = {}
    for name, run, torch_threads in (
        ("one call", lambda: embedder.encode_candidates(candidates), threads),
        ("side by side", in_pieces, workers.torch_threads or threads),
    ):
        torch.set_num_threads(torch_threads)
        cpu_started = time.process_time()
        docs_per_s = rate(run, len(candidates))
        cpu_ms = (time.process_time() - cpu_started) / (3 * len(candidates)) * 1000
        rates[name] = docs_per_s, cpu_ms
    torch.set_num_threads(threads)
    return rates


if __name__ == "__main__":
    main()

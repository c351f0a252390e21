"""Ingestion throughput through the whole path against raw batched encoding, in one run.

    python -m bench.ingest [--documents 1000] [--kind mixed|text] [--raw-sample 2000]

Writes a JSONL manifest of generated documents (mixed: a third text, a third image, a third
image+text), ingests it with ``umarvel ingest`` (CLI -> API -> queue -> embed -> Milvus ->
SQL) and encodes the same documents in-process (the first ``--raw-sample`` of them: a rate
needs no more). Prints documents/s of both, their ratio (target >= 0.7) and the peak memory
of the CLI, the API and the workers, which stays flat with the manifest's length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.common import rate, sample_items
from bench.service import _peak_mb
from cli.samples import b64
from cli.stack import Stack, free_port
from core.tiny_models import build_all
from recall import Candidate, Embedder

REDIS_URL = "redis://127.0.0.1:6379/14"
# Runs `umarvel ARGS...` and prints its own peak resident memory on the way out.
PEAK_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('PEAK_KB', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
    "sys.argv = ['umarvel', *sys.argv[1:]]\n"
    "runpy.run_module('cli.main', run_name='__main__')\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--kind", choices=["mixed", "text"], default="mixed")
    parser.add_argument("--raw-sample", type=int, default=2000)
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
            http.post(f"{stack.api_url}/v1/collections", json={"name": "bench"})
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PEAK_WRAPPER,
                    "ingest",
                    str(manifest),
                    "--collection",
                    "bench",
                    "--api",
                    stack.api_url,
                    "--key",
                    key,
                    "--batch-size",
                    "500",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            served = args.documents / (time.perf_counter() - started)
            cli_peak = int(result.stderr.rsplit("PEAK_KB ", 1)[1].split()[0]) / 1024
            print(result.stdout.strip().splitlines()[-1])
            peaks = {name: _peak_mb(proc.pid) for name, proc in stack.processes.items()}
        embedder = Embedder.from_pretrained(model)
        sample = sample_items(min(args.documents, args.raw_sample), args.kind)
        candidates = [Candidate(text, image) for text, image in sample]
        raw = rate(lambda: embedder.encode_candidates(candidates), len(candidates))
    print(f"{args.documents} documents ({args.kind}), tiny qwen3_vl, 2-core CPU")
    print(
        f"whole path {served:.1f} docs/s vs raw batched encoding {raw:.1f} docs/s: "
        f"{served / raw:.2f}x (target >= 0.7)"
    )
    print(
        f"peak memory: CLI {cli_peak:.0f} MiB, "
        + ", ".join(f"{name} {mb:.0f} MiB" for name, mb in peaks.items())
    )


if __name__ == "__main__":
    main()

"""Per-process resources of a worker, built lazily on first use (never before a fork).

Models load once per process under a lock, on the first task that needs them: never at
import, never in the parent of a prefork pool, never inside Celery's 4-second
``worker_process_init`` window.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from core.contract import Task
from core.metrics import BATCH_SIZE
from core.settings import Settings, get_settings
from media.store import MediaStore, open_media_store
from queries.cache import ResultCache
from store.db import make_engine, make_session_factory
from store.redis import make_redis
from store.traffic import yield_to_queries
from workers.batcher import Arrivals

if TYPE_CHECKING:
    import numpy as np
    import redis
    from celery import Celery
    from sqlalchemy.orm import Session, sessionmaker

    from mllm.loading import RunConfig
    from recall.index import MilvusIndex
    from recall.methods import RecallEmbedder
    from recall.prompts import Candidate, Query
    from rerank.methods import PairScorer
    from rerank.reranker import RerankCandidate, RerankQuery
    from workers.batcher import MicroBatcher

    # What the models' batchers take and give: embedding rows, P(Yes) values.
    EmbedBatcher = MicroBatcher[Query | Candidate, np.ndarray]
    PairBatcher = MicroBatcher[tuple[RerankQuery, RerankCandidate], float]

T = TypeVar("T")
INGEST_PRIORITY = 1  # after queries (0) in the model's batcher
CPU_RUNNERS = 2  # model calls side by side on a CPU, by default
PIECE_BATCHES = 4  # an ingestion piece: this many embedding batches


class Lazy(Generic[T]):
    """A value built once, on first ``get()``, under a lock."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value

    @property
    def loaded(self) -> bool:
        return self._value is not None


class Runtime:
    """Settings-driven handles a task needs: SQL, Redis, media, Milvus and the models."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._embedders: dict[str, Lazy[RecallEmbedder]] = {}
        self._rerankers: dict[str, Lazy[PairScorer]] = {}
        self._batchers: dict[tuple[str, str], Lazy[MicroBatcher[Any, Any]]] = {}
        self._lock = threading.Lock()
        # Query steps on their way to a model (``workers.batcher.Arrivals``), by batcher kind.
        self.arrivals = {"query": Arrivals(), "pairs": Arrivals()}

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        engine = make_engine(self.settings.database_url, pool_size=self.settings.database_pool_size)
        return make_session_factory(engine, self.redis)

    @cached_property
    def redis(self) -> redis.Redis:
        return make_redis(self.settings.redis_url)

    @cached_property
    def cache(self) -> ResultCache:
        return ResultCache(self.redis, self.settings.result_ttl_seconds)

    @cached_property
    def media(self) -> MediaStore:
        return open_media_store(self.settings)

    @cached_property
    def celery(self) -> Celery:
        from core.celery_app import make_celery

        return make_celery(self.settings)

    def send(self, task: Task, args: list[Any], countdown: float = 0.0) -> None:
        """Send a task by name (``ingestion.outbox.Send``)."""
        self.celery.send_task(task.value, args=args, countdown=countdown or None)

    @cached_property
    def index(self) -> MilvusIndex:
        from recall.index import MilvusIndex

        return MilvusIndex(
            self.settings.milvus_uri,
            token=self.settings.milvus_token.get_secret_value(),
            search_consistency=self.settings.milvus_search_consistency,
        )

    def query_batcher(self, model: str) -> EmbedBatcher:
        """The one caller of ``model``: embeds the queries of concurrent tasks together (one
        forward per batch), and ingestion's candidates when no query waits."""

        def embed(items: list[Any]) -> np.ndarray:
            from recall.prompts import Query

            embedder = self.embedder(model)
            if isinstance(items[0], Query):  # a batch holds one priority, so one kind
                return embedder.encode_queries(items)
            return embedder.encode_candidates(items)

        return self._batcher(("query", model), embed, self.settings.embed_batch_size)

    def candidate_encoder(self, model: str) -> Callable[[list[Candidate]], np.ndarray]:
        """Embeds ingestion candidates through ``query_batcher``, in pieces at a lower
        priority than queries: a query waits for at most one piece, never a whole chunk.
        Each piece first waits (up to ``UMARVEL_INGEST_YIELD_SECONDS``) for a gap in query
        traffic, which query steps in any process mark in Redis. A piece that does not
        answer within the task time limit raises TimeoutError."""
        import numpy as np

        from ingestion.chunks import chunked

        piece = self.settings.embed_batch_size * PIECE_BATCHES

        def submit(items: list[Candidate]) -> np.ndarray:
            # Queries anywhere (another process shares the CPU, SQL and Milvus) first.
            yield_to_queries(self.redis, self.settings.ingest_yield_seconds)
            batcher = self.query_batcher(model)
            limit = self.settings.task_time_limit
            return np.asarray(batcher.submit(items, timeout=limit, priority=INGEST_PRIORITY))

        def encode(candidates: list[Candidate]) -> np.ndarray:
            out: dict[int, np.ndarray] = {}
            stills = [i for i, c in enumerate(candidates) if c.video is None]
            for part in chunked(stills, piece):
                out.update(zip(part, submit([candidates[i] for i in part]), strict=True))
            # A video is sampled here, in the ingesting thread, and sent alone: decoding
            # never holds the model's batcher, and one video's frames are in memory at once.
            for i, candidate in enumerate(candidates):
                if candidate.video is not None:
                    video = self.embedder(model).sample(candidate.video)
                    out[i] = submit([replace(candidate, video=video)])[0]
            if not out:
                return np.zeros((0, 0), np.float32)
            return np.stack([out[i] for i in range(len(candidates))])

        return encode

    def pair_batcher(self, model: str) -> PairBatcher:
        """Scores the (query, candidate) pairs of concurrent rerank tasks together."""
        return self._batcher(
            ("pairs", model),
            lambda pairs: self.reranker(model).score_pairs(pairs),
            self.settings.rerank_batch_size * 8,
        )

    def _batcher(
        self, key: tuple[str, str], run: Callable[[list[Any]], Any], size: int
    ) -> MicroBatcher[Any, Any]:
        from workers.batcher import MicroBatcher

        with self._lock:
            holder = self._batchers.get(key)
            if holder is None:
                wait = self.settings.batch_wait_ms / 1000
                observe = BATCH_SIZE.labels(key[0]).observe
                holder = self._batchers[key] = Lazy(
                    lambda: MicroBatcher(
                        run,
                        max_items=size,
                        max_wait=wait,
                        name=f"{key[0]}-batcher",
                        on_batch=observe,
                        arrivals=self.arrivals[key[0]],
                        runners=self.runners,
                    )
                )
        return holder.get()

    @cached_property
    def runners(self) -> int:
        """Model calls in flight at once, per batcher: ``UMARVEL_MODEL_RUNNERS``, or one on
        a GPU and two on a CPU, each on half its cores. Two calls side by side outrun one
        call spread over every core, whose threads all wait whenever another process takes
        one core; more would slow each lone query, whose call gets fewer threads."""
        if self.settings.model_runners:
            return self.settings.model_runners
        return 1 if self._on_gpu else min(CPU_RUNNERS, cpu_cores())

    @cached_property
    def _on_gpu(self) -> bool:
        from mllm.loading import resolve_device

        return resolve_device(self.settings.device).type != "cpu"

    @cached_property
    def torch_threads(self) -> int | None:
        """torch's threads: ``UMARVEL_TORCH_THREADS``, or on a CPU the cores shared among
        the runners; None leaves torch's own default (a GPU)."""
        if self.settings.torch_threads:
            return self.settings.torch_threads
        return None if self._on_gpu else max(1, cpu_cores() // self.runners)

    def _threads(self) -> None:
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)

    def embedder(self, model: str) -> RecallEmbedder:
        """The embedder recall model spec ``model`` names (``recall.methods``), loaded on
        first use."""
        with self._lock:
            holder = self._embedders.get(model)
            if holder is None:
                holder = self._embedders[model] = Lazy(lambda: self._load_embedder(model))
        return holder.get()

    def reranker(self, model: str) -> PairScorer:
        with self._lock:
            holder = self._rerankers.get(model)
            if holder is None:
                holder = self._rerankers[model] = Lazy(lambda: self._load_reranker(model))
        return holder.get()

    def _load_embedder(self, model: str) -> RecallEmbedder:
        from recall.methods import Options, load_embedder

        self._threads()
        s = self.settings
        processor = s.recall_processor if model == s.recall_model and s.recall_processor else None
        run = self._run_config(s.embed_batch_size, s.embed_batch_tokens)
        return load_embedder(model, Options(processor, s.device, s.dtype, run))

    def _load_reranker(self, model: str) -> PairScorer:
        from rerank.methods import Options, load_reranker

        self._threads()
        s = self.settings
        processor = s.rerank_processor if model == s.rerank_model and s.rerank_processor else None
        run = self._run_config(s.rerank_batch_size, s.rerank_batch_tokens)
        base = s.rerank_base_model or None
        return load_reranker(model, Options(processor, base, s.device, s.dtype, run))

    def _run_config(self, batch_size: int, batch_tokens: int) -> RunConfig:
        from mllm.loading import RunConfig

        return RunConfig(
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            max_image_bytes=self.settings.max_image_bytes,
            max_image_pixels=self.settings.max_image_pixels,
            max_video_bytes=self.settings.max_video_bytes,
            max_video_pixels=self.settings.max_video_pixels,
            max_video_frames=self.settings.max_video_frames,
            concurrent_calls=self.runners,
        )


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


_runtime = Lazy(lambda: Runtime(get_settings()))


def runtime() -> Runtime:
    return _runtime.get()

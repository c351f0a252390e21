"""One typed settings object, read from ``UMARVEL_*`` environment variables.

The API, the workers and the CLI all build their configuration from here. Tests pass
their own ``Settings(...)`` instead of patching globals.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_RECALL_MODEL = "TencentBAC/U-MARVEL-Qwen3VL-4B-Instruct"
DEFAULT_RERANK_MODEL = "Qwen/Qwen3-VL-4B-Instruct"


class Settings(BaseSettings):
    """Every knob of umarvel-search. Each field is ``UMARVEL_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="UMARVEL_", extra="ignore", frozen=True)

    def __repr_args__(self) -> Any:
        """Secrets never reach a log, a traceback or a shell through ``repr``: credentials
        are ``SecretStr`` (read with ``get_secret_value()``, shown masked), and the
        passwords of URLs are masked."""
        for name, value in super().__repr_args__():
            if name in _URL_FIELDS and isinstance(value, str):
                yield name, _without_password(value)
            else:
                yield name, value

    log_format: Literal["logfmt", "json"] = Field(
        "logfmt",
        description="Log lines as key=value (logfmt) or one JSON object each; every field "
        "an event carries is kept.",
    )
    tracing: str = Field(
        "",
        description="OpenTelemetry tracing (the tracing extra): otlp (to the collector the "
        "OTEL_EXPORTER_OTLP_* variables name), jsonl:PATH (spans appended to a file), or "
        "empty (off).",
    )
    auth_enabled: bool = Field(
        True,
        description="Require an API key on every route but /healthz (off only in development).",
    )

    # Storage
    database_url: str = Field(
        "sqlite:///.umarvel/umarvel.db", description="SQLAlchemy URL of the metadata database."
    )
    database_pool_size: int = Field(
        8,
        ge=1,
        description="PostgreSQL connections each process keeps open (as many more open under "
        "load and close when done).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis: Celery broker, caches and notices."
    )
    milvus_uri: str = Field(
        "http://127.0.0.1:19530",
        description="Milvus endpoint (milvus-lite server or Milvus standalone/cluster).",
    )
    milvus_token: SecretStr = Field(
        SecretStr(""), description="Milvus token (user:password), empty for none."
    )
    milvus_prefix: str = Field(
        "umarvel_", description="Prefix of every Milvus collection this deployment owns."
    )
    milvus_search_consistency: Literal["LastWrite", "Strong", "Bounded"] = Field(
        "LastWrite",
        description="Consistency of searches on a Milvus server: LastWrite sees every write "
        "acknowledged before the query was accepted, waiting only until the server has "
        "applied the newest write recorded for the collection in Redis (Strong when none "
        "is recorded); Strong sees the same and waits for the server's next time tick on "
        "every search (about 200 ms); Bounded answers at once but may miss the last seconds "
        "of writes, in answers that are then cached. milvus-lite is always strong.",
    )
    media_backend: Literal["local", "s3"] = Field(
        "local",
        description="Where stored media live: 'local' (the folder UMARVEL_MEDIA_ROOT) or 's3' "
        "(a bucket of an S3-compatible object store: AWS S3, MinIO, GCS's S3 API).",
    )
    media_root: Path = Field(Path(".umarvel/media"), description="Folder of the media store.")
    media_s3_endpoint: str = Field(
        "", description="URL of the S3-compatible endpoint (empty: AWS S3 itself)."
    )
    media_s3_bucket: str = Field("", description="Bucket of the media store (backend 's3').")
    media_s3_region: str = Field("us-east-1", description="Region of the media bucket.")
    media_s3_access_key: SecretStr = Field(
        SecretStr(""),
        description="Access key id for the media bucket (required with backend 's3').",
    )
    media_s3_secret_key: SecretStr = Field(
        SecretStr(""),
        description="Secret access key for the media bucket (required with backend 's3').",
    )
    media_s3_prefix: str = Field(
        "", description="Prefix of every media object in the bucket (empty: the bucket's root)."
    )
    media_s3_create_bucket: bool = Field(
        False, description="Create the media bucket when it is missing (off: it must exist)."
    )
    ingest_roots: list[Path] = Field(
        default_factory=list,
        description="Server folders documents may name by image_path (JSON list).",
    )

    # Models
    recall_model: str = Field(
        DEFAULT_RECALL_MODEL, description="U-MARVEL checkpoint: hub id or local folder."
    )
    recall_processor: str = Field(
        "", description="Processor hub id or folder, when it differs from the checkpoint."
    )
    rerank_model: str = Field(
        DEFAULT_RERANK_MODEL, description="Reranker checkpoint: hub id or local folder."
    )
    allowed_recall_models: list[str] = Field(
        default_factory=list,
        description="Recall models a collection may name, besides UMARVEL_RECALL_MODEL (JSON "
        "list); workers load only these, so a client can never make them load anything else.",
    )
    rerank_base_model: str = Field(
        "", description="Base model of a LoRA reranker adapter, when not the adapter's own."
    )
    rerank_processor: str = Field(
        "", description="Reranker processor, when it differs from the checkpoint."
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch threads per worker process (0: the cores shared among the model "
        "runners on a CPU, torch's default on a GPU).",
    )
    model_runners: int = Field(
        0,
        ge=0,
        description="Model calls in flight at once in a worker process (0: two on a CPU, each "
        "on half its cores, one on a GPU).",
    )
    embed_batch_size: int = Field(16, ge=1, description="Most items in one embedding forward.")
    embed_batch_tokens: int = Field(
        16384, ge=1, description="Most tokens in one padded embedding batch."
    )
    rerank_batch_size: int = Field(8, ge=1, description="Most pairs in one reranker forward.")
    rerank_batch_tokens: int = Field(
        16384, ge=1, description="Most tokens in one padded reranker batch."
    )

    worker_concurrency: int = Field(
        8, ge=1, description="Tasks a worker runs at once (threads); their model calls are batched."
    )
    batch_wait_ms: float = Field(
        5.0,
        ge=0,
        description="The longest a worker waits to gather concurrent queries into a batch (only "
        "while another query step is on its way to the model).",
    )

    worker_metrics_port: int = Field(
        0, ge=0, description="Port of a worker's Prometheus /metrics (0: not served)."
    )
    heartbeat_seconds: float = Field(
        5.0, gt=0, description="How often a worker reports its warm model to Redis (/statusz)."
    )

    # Search defaults and limits
    default_top_k: int = Field(10, ge=1, description="Results returned when a query gives none.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a query may ask for.")
    keyword_window: int = Field(
        2_000,
        ge=0,
        description="A query word in more documents than this is common: with a rarer word "
        "beside it, only the rarer word's documents rank; alone, only the newest this many "
        "of its documents (0: every match ranks).",
    )
    max_result_window: int = Field(
        1000,
        ge=1,
        description="Deepest rank a query may page to (offset + top_k): a deep page ranks "
        "every candidate above it.",
    )
    default_rerank_k: int = Field(50, ge=1, description="Recall candidates passed to rerank.")
    max_rerank_k: int = Field(
        200,
        ge=1,
        description="Most recall candidates a query (or a collection's default) may pass to "
        "the rerank: each is one MLLM pair and one media read.",
    )
    default_rerank_weight: float = Field(0.1, description="w in cosine + w * p_yes.")
    max_wait_seconds: float = Field(30.0, ge=0, description="Longest 'wait' a query may ask for.")
    # Per-key quotas (api.quotas): each key may have its own (umarvel keys quotas).
    key_rate_limit: int = Field(
        0,
        ge=0,
        description="Requests per second one API key may make, counted in Redis across every "
        "API process; over it a 429 with Retry-After (0: no limit; compose sets 100).",
    )
    key_max_waiting: int = Field(
        2,
        ge=0,
        description="Query POSTs of one API key held waiting for their job at once; beyond "
        "it a POST answers 202 at once instead of holding an API thread (0: no limit).",
    )
    key_max_queued: int = Field(
        50,
        ge=0,
        description="Query jobs of one API key queued or running at once; beyond it a new "
        "query is a 429 with Retry-After, before the shared queue is full (0: no limit).",
    )
    query_wait_seconds: float = Field(
        1.0,
        ge=0,
        description="How long a query POST that gives no 'wait' waits for its result before "
        "answering 202 with the job (0: answer 202 at once).",
    )
    result_ttl_seconds: int = Field(3600, ge=1, description="Lifetime of cached query results.")
    job_ttl_seconds: int = Field(
        86400,
        ge=1,
        description="Query jobs expire, and are cleaned up, this long after they finished, "
        "or after they were created when they never finished (their messages were lost).",
    )
    audit_retention_days: int = Field(
        365,
        ge=1,
        description="Audit events (admin actions, refused requests) are deleted by the "
        "clean-up this many days after they happened.",
    )
    ingest_job_ttl_seconds: int = Field(
        30 * 86400,
        ge=1,
        description="Finished ingestion, reindex and repair jobs are cleaned up this long "
        "after they finished (their documents stay).",
    )
    media_grace_seconds: int = Field(
        3600,
        ge=0,
        description="Stored media no document or query job refers to are deleted by the "
        "clean-up once older than this (a request stores its images just before its rows).",
    )
    max_queue_depth: int = Field(
        1000,
        ge=1,
        description="Queued query tasks (recall and rerank queues) beyond which new queries "
        "get 429 (backpressure).",
    )
    max_ingest_queue_depth: int = Field(
        1000,
        ge=1,
        description="Queued ingestion tasks (chunks, deletes) beyond which ingestion requests "
        "get 429; counted apart from queries.",
    )
    query_embedding_ttl_seconds: int = Field(
        86400, ge=0, description="Lifetime of cached query embeddings (0: no cache)."
    )
    ingest_yield_seconds: float = Field(
        0.5,
        ge=0,
        description="Longest an ingestion piece (4 embedding batches) waits for a gap in query "
        "traffic before it runs anyway (0: never waits).",
    )
    ingest_chunk_size: int = Field(
        256, ge=1, description="Documents per ingestion (and reindex) task."
    )
    redrive_seconds: float = Field(
        30.0,
        ge=0,
        description="How often a recall worker re-queues ingestion work the broker lost to a "
        "worker killed mid-delivery (0: never).",
    )
    reconcile_seconds: float = Field(
        300.0,
        ge=0,
        description="How often a worker of the ingest queue compares each quiet collection's "
        "Milvus rows with the documents' states in SQL and repairs every disagreement: "
        "re-embeds what Milvus lost and what failed for an outage, removes vectors SQL no "
        "longer has (0: never).",
    )
    ingest_retry_seconds: float = Field(
        1800.0,
        gt=0,
        description="How long ingestion work that keeps failing for a reason outside the "
        "documents (Milvus, the database or the broker away or restarting) is retried, with "
        "backoff from 1 s doubling to 60 s, before its documents are marked failed; those are "
        "queued again by reconciliation once Milvus answers.",
    )
    reindex_drop_delay_seconds: float = Field(
        30.0,
        ge=0,
        description="After a reindex switches, the old generation is dropped this much later "
        "(queries already searching it finish first).",
    )
    max_documents_per_request: int = Field(1000, ge=1, description="Documents in one request.")
    max_text_chars: int = Field(8192, ge=1, description="Longest document or query text.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest image file.")
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Largest decoded image (stops decompression bombs)."
    )
    max_video_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="Largest video file (MP4/MOV, WebM/Matroska, AVI)."
    )
    max_video_pixels: int = Field(
        3840 * 2160,
        ge=1,
        description="Largest video frame in pixels, read from the stream header before decoding.",
    )
    max_video_frames: int = Field(
        18_000,
        ge=2,
        description="Most frames a video may have (every frame is decoded to count them: "
        "18,000 is 10 minutes at 30 frames a second).",
    )
    max_video_seconds: float = Field(
        600.0, gt=0, description="Longest video, in seconds (read from the header, then counted)."
    )
    max_video_fps: float = Field(
        120.0, gt=0, description="Highest video frame rate (frames a second, from the header)."
    )
    max_query_video_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Largest video a query may carry (it travels in the query's body).",
    )
    video_segment_seconds: float = Field(
        30.0,
        gt=0,
        description="A video longer than this is embedded as overlapping segments of this "
        "length, each its own vector with its time span (30 s: the longest MSR-VTT clips, the "
        "length U-MARVEL's video evaluation embedded whole).",
    )
    video_segment_stride: float = Field(
        15.0,
        gt=0,
        description="Seconds from one segment's start to the next (at most "
        "UMARVEL_VIDEO_SEGMENT_SECONDS, so segments overlap or touch).",
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Largest ingestion request body (a query takes one image and its text; "
        "other routes 1 MiB).",
    )

    # Celery
    task_time_limit: int = Field(600, ge=1, description="Hard time limit of one task (seconds).")
    visibility_timeout: int = Field(
        3600, ge=1, description="Redis re-delivers a task unacknowledged for this long."
    )

    @model_validator(mode="after")
    def _limits_agree(self) -> Settings:
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "UMARVEL_VISIBILITY_TIMEOUT must exceed UMARVEL_TASK_TIME_LIMIT, or Redis "
                "re-delivers tasks that are still running"
            )
        if self.query_wait_seconds > self.max_wait_seconds:
            raise ValueError("UMARVEL_QUERY_WAIT_SECONDS must not exceed UMARVEL_MAX_WAIT_SECONDS")
        if self.video_segment_stride > self.video_segment_seconds:
            raise ValueError(
                "UMARVEL_VIDEO_SEGMENT_STRIDE must not exceed UMARVEL_VIDEO_SEGMENT_SECONDS, or "
                "parts of a video fall between segments"
            )
        return self

    @property
    def recall_models(self) -> list[str]:
        """Every recall model a collection may use; the reranker is the operator's alone."""
        return [
            self.recall_model,
            *(m for m in self.allowed_recall_models if m != self.recall_model),
        ]

    @property
    def recall_processor_path(self) -> str:
        return self.recall_processor or self.recall_model

    @property
    def rerank_processor_path(self) -> str:
        return self.rerank_processor or self.rerank_model


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


_URL_FIELDS = frozenset({"database_url", "redis_url", "milvus_uri", "media_s3_endpoint"})


def _without_password(url: str) -> str:
    """``scheme://user:***@host/...`` for a URL that carries a password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"

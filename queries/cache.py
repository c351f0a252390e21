"""Redis result cache and in-flight locks.

A result key carries every version that can change the answer: the collection's name and
version, the recall and rerank model ids, and a hash of the normalised request. A write
to a collection bumps its version, so a stale result is never served.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from core.contract import SearchPlan
from store.redis import PREFIX

# Bumped when a cached answer's shape changes: answers of an older shape are never read.
RESULT_FORMAT = 3


def result_key(
    collection_uid: str,
    version: int,
    recall_model: str,
    rerank_model: str,
    plan: SearchPlan,
) -> str:
    """``collection_uid`` is unique per created collection, ``version`` bumps on each write."""
    models = hashlib.sha256(f"{recall_model}\0{rerank_model}".encode()).hexdigest()[:16]
    digest = plan.digest()
    return f"{PREFIX}:result:f{RESULT_FORMAT}:{collection_uid}:v{version}:{models}:{digest}"


class ResultCache:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.client.set(key, json.dumps(value), ex=self.ttl)

    def claim(self, key: str, job_id: str, ttl_seconds: int) -> str:
        """Register ``job_id`` as the job computing ``key``; returns the job that holds it."""
        lock = f"{PREFIX}:inflight:{key}"
        if self.client.set(lock, job_id, nx=True, ex=ttl_seconds):
            return job_id
        holder = self.client.get(lock)
        if holder is None:  # expired in between: ours to take next time
            return job_id
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def release(self, key: str) -> None:
        self.client.delete(f"{PREFIX}:inflight:{key}")

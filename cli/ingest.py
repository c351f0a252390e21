"""``umarvel ingest``: stream a folder or a JSONL manifest into a collection through the API.

The input is read lazily and sent in batches, so memory stays flat whatever its size. A
state file records how many items were accepted; after an interruption the same command
resumes there (documents are upserted by id, so a batch sent twice changes nothing).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import click

from core.jsonl import read_jsonl
from umarvel_client import Client, IngestSummary

POLL_SECONDS = 0.5  # between reads of the jobs' progress
FEW_JOBS = 2  # at most this many unfinished jobs are read five times as often

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}
# A batch's media, as base64, stays under this (the server's default request limit is
# 64 MiB): a batch is cut early when the next document would pass it, and a document
# larger than it goes alone.
BATCH_BYTES = 48 * 1024 * 1024


def folder_items(folder: Path) -> Iterator[dict[str, Any]]:
    """One document per image or video; its caption from ``<stem>.txt`` beside it, when
    present."""
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES or not path.is_file():
            continue
        data = base64.b64encode(path.read_bytes()).decode()
        doc: dict[str, Any] = {"id": str(path.relative_to(folder))}
        if suffix in VIDEO_SUFFIXES:
            doc["media"] = [{"kind": "video", "data": data}]
        else:
            doc["image"] = data
        caption = path.with_suffix(".txt")
        if caption.exists():
            doc["text"] = caption.read_text().strip()
        yield doc


def manifest_items(manifest: Path) -> Iterator[dict[str, Any]]:
    """Lines of a JSONL manifest; a relative ``image_path`` is read beside the manifest."""
    for _, doc in read_jsonl(manifest):
        path = doc.get("image_path") if isinstance(doc, dict) else None
        if path is not None and not Path(path).is_absolute():
            image = manifest.parent / path
            if image.exists():  # read here: the server may not see this disk
                doc["image"] = base64.b64encode(image.read_bytes()).decode()
                del doc["image_path"]
        yield doc


@dataclass
class State:
    path: Path
    sent: int = 0
    jobs: list[str] | None = None

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls(path, 0, [])
        data = json.loads(path.read_text())
        return cls(path, int(data["sent"]), list(data["jobs"]))

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sent": self.sent, "jobs": self.jobs}))
        tmp.replace(self.path)


def run_ingest(
    source: Path,
    collection: str,
    api: Client,
    batch_size: int,
    state_path: Path,
    wait: bool = True,
) -> IngestSummary:
    items = folder_items(source) if source.is_dir() else manifest_items(source)
    state = State.load(state_path)
    stream = islice(items, state.sent, None)  # resume after what was accepted
    if state.sent:
        click.echo(f"resuming after {state.sent} documents ({state_path})")
    for batch in batches(stream, batch_size, BATCH_BYTES):
        job = api.documents.submit(collection, batch)  # 429 and 503 retried by the client
        state.jobs = [*(state.jobs or []), job.id]
        state.sent += len(batch)
        state.save()
        click.echo(f"sent {state.sent} documents", err=True)
    return _follow(api, state.jobs or [], wait)


def batches(items: Iterator[Any], size: int, max_bytes: int) -> Iterator[list[Any]]:
    """``items`` in batches of at most ``size`` documents and ``max_bytes`` of base64 media
    (a larger document alone), in order."""
    batch: list[Any] = []
    held = 0
    for doc in items:
        weight = _media_bytes(doc)
        if batch and (len(batch) == size or held + weight > max_bytes):
            yield batch
            batch, held = [], 0
        batch.append(doc)
        held += weight
    if batch:
        yield batch


def _media_bytes(doc: Any) -> int:
    """The base64 media ``doc`` carries (0 for what is not a document: the API says why)."""
    if not isinstance(doc, dict):
        return 0
    media = doc.get("media")
    parts = [doc.get("image")]
    parts += (
        [part.get("data") for part in media if isinstance(part, dict)]
        if isinstance(media, list)
        else []
    )
    return sum(len(part) for part in parts if isinstance(part, str))


def _follow(api: Client, job_ids: list[str], wait: bool) -> IngestSummary:
    """The jobs' totals, with a progress bar until every job has finished."""
    summary = IngestSummary([api.jobs.ingest_job(job_id) for job_id in job_ids])
    if not wait or all(job.finished for job in summary.jobs):
        return summary
    with click.progressbar(length=summary.total, label="indexing") as bar:
        shown = 0
        while not all(job.finished for job in summary.jobs):
            # Every unfinished job is read each round: slowly while many are, quickly for
            # the last few, so the command ends soon after the work does.
            unfinished = sum(not job.finished for job in summary.jobs)
            time.sleep(POLL_SECONDS if unfinished > FEW_JOBS else POLL_SECONDS / 5)
            summary = IngestSummary(
                [job if job.finished else api.jobs.ingest_job(job.id) for job in summary.jobs]
            )
            progress = summary.done + summary.failed
            bar.update(progress - shown)
            shown = progress
    return summary

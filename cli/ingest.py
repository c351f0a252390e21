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
import requests

from core.jsonl import read_jsonl

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def folder_items(folder: Path) -> Iterator[dict[str, Any]]:
    """One document per image; its caption from ``<stem>.txt`` beside it, when present."""
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        doc: dict[str, Any] = {
            "id": str(path.relative_to(folder)),
            "image": base64.b64encode(path.read_bytes()).decode(),
        }
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
    api: str,
    key: str,
    batch_size: int,
    state_path: Path,
    wait: bool = True,
) -> dict[str, int]:
    items = folder_items(source) if source.is_dir() else manifest_items(source)
    state = State.load(state_path)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    url = f"{api.rstrip('/')}/v1/collections/{collection}/documents"
    stream = islice(items, state.sent, None)  # resume after what was accepted
    if state.sent:
        click.echo(f"resuming after {state.sent} documents ({state_path})")
    while batch := list(islice(stream, batch_size)):
        response = _post(http, url, batch)
        state.jobs = [*(state.jobs or []), response["id"]]
        state.sent += len(batch)
        state.save()
        click.echo(f"sent {state.sent} documents", err=True)
    return _follow(http, api, state.jobs or [], wait)


def _post(http: requests.Session, url: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    for attempt in range(5):
        response = http.post(url, json={"documents": batch}, timeout=300)
        if response.status_code in (429, 503):
            time.sleep(float(response.headers.get("Retry-After", 2**attempt)))
            continue
        if response.status_code != 202:
            message = response.json().get("error", {}).get("message", response.text)
            raise click.ClickException(f"the API refused a batch: {message}")
        return dict(response.json())
    raise click.ClickException("the API stayed overloaded; run the same command again later")


def _follow(http: requests.Session, api: str, jobs: list[str], wait: bool) -> dict[str, int]:
    """Totals over the jobs, with a progress bar until every job has finished."""

    def totals() -> tuple[dict[str, int], bool]:
        sums = {"total": 0, "done": 0, "failed": 0}
        finished = True
        for job_id in jobs:
            job = http.get(f"{api.rstrip('/')}/v1/ingest-jobs/{job_id}", timeout=30).json()
            for name in sums:
                sums[name] += int(job[name])
            finished &= job["state"] in ("done", "failed")
        return sums, finished

    sums, finished = totals()
    if wait and not finished:
        with click.progressbar(length=sums["total"], label="indexing") as bar:
            shown = 0
            while not finished:
                time.sleep(0.5)
                sums, finished = totals()
                progress = sums["done"] + sums["failed"]
                bar.update(progress - shown)
                shown = progress
    return sums

"""Content-addressed media store: the same bytes are stored once, under their SHA-256.

Two backends: ``LocalMediaStore`` (a folder) and ``media.s3.S3MediaStore`` (a bucket of
an S3-compatible object store). ``open_media_store`` builds the one the settings name; the
API, the workers and the CLI build their store through it and nothing else.

Workers read media only from the store, by key: the API stores every image (base64
``image``, multipart ``image_file``, server-side ``image_path``) before it queues any work.
An ``image_path`` is read by the API process, at request time, from the folders of
``UMARVEL_INGEST_ROOTS`` on the API host (``api/routes/documents.py``); no worker opens it.
``umarvel ingest`` reads a manifest's relative ``image_path`` on the client instead and
sends the bytes. With the ``s3`` backend no folder is shared: the API and each worker may
run on hosts of their own.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from core.errors import NotFound

if TYPE_CHECKING:
    from core.settings import Settings

_HEX = set("0123456789abcdef")


class MediaStore(Protocol):
    """What the API and the workers need from a media backend (local folder, S3, ...)."""

    def put(self, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def age(self, key: str) -> float | None:
        """Seconds since ``key`` was last stored (a put of bytes already there counts), or
        ``None`` when it is not stored."""
        ...

    def older_than(self, seconds: float) -> Iterator[str]:
        """Keys of the objects stored more than ``seconds`` ago."""
        ...


class MediaConfigError(ValueError):
    """The settings do not describe a usable media store (raised when it is built)."""


def media_key(data: bytes) -> str:
    """The key ``data`` is stored under (its SHA-256), known before it is stored."""
    return hashlib.sha256(data).hexdigest()


def is_media_key(key: str) -> bool:
    """A media key is the 64 lowercase hex digits of a SHA-256."""
    return len(key) == 64 and set(key) <= _HEX


def open_media_store(settings: Settings) -> MediaStore:
    """The media store ``settings.media_backend`` names, configured from ``settings``."""
    if settings.media_backend == "s3":
        from media.s3 import S3MediaStore

        return S3MediaStore.from_settings(settings)
    return LocalMediaStore(settings.media_root)


class LocalMediaStore:
    """Files under ``root/ab/cd/<sha256>``; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not is_media_key(key):
            raise NotFound(f"no media object {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        key = media_key(data)
        path = self._path(key)
        try:  # stored already: sent again now, so young again for the clean-up's grace
            os.utime(path)
            return key
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no media object {key!r}") from None

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).exists()
        except NotFound:
            return False

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def age(self, key: str) -> float | None:
        try:
            return time.time() - self._path(key).stat().st_mtime
        except (FileNotFoundError, NotFound):
            return None

    def older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        for path in self.root.glob("??/??/*"):
            name = path.name
            if is_media_key(name):
                try:
                    if path.stat().st_mtime < cutoff:
                        yield name
                except FileNotFoundError:  # deleted meanwhile
                    continue

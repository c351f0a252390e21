"""The media store's contract, the same tests on both backends: a local folder, and an S3
bucket on a real S3-protocol server (moto's, as a separate process)."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.errors import NotFound, Unavailable
from core.settings import Settings
from media.s3 import S3MediaStore
from media.store import LocalMediaStore, MediaConfigError, MediaStore, open_media_store
from tests.s3_server import s3_server

_S3_FIELDS = [name for name in Settings.model_fields if name.startswith("media_")]


@pytest.fixture(autouse=True)
def _no_media_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' settings are the ones they give, whatever the environment holds."""
    for name in _S3_FIELDS:
        monkeypatch.delenv(f"UMARVEL_{name.upper()}", raising=False)


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def s3_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "media_backend": "s3",
        "media_s3_endpoint": url,
        "media_s3_bucket": f"media-{uuid.uuid4().hex[:12]}",
        "media_s3_access_key": "test-access-key",
        "media_s3_secret_key": "test-secret-key",
        "media_s3_prefix": "umarvel/media",
        "media_s3_create_bucket": True,
    }
    return Settings(**(values | overrides))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MediaStore:
    if request.param == "local":
        return open_media_store(Settings(media_root=tmp_path / "media"))
    return open_media_store(s3_settings(request.getfixturevalue("s3_url")))


def test_put_then_get_returns_the_bytes(store: MediaStore) -> None:
    key = store.put(b"some image bytes")
    assert key == hashlib.sha256(b"some image bytes").hexdigest()
    assert store.exists(key)
    assert store.get(key) == b"some image bytes"


def test_the_same_bytes_are_stored_once(store: MediaStore) -> None:
    first = store.put(b"abc")
    assert store.put(b"abc") == first
    other = store.put(b"abd")
    assert sorted(store.older_than(-60)) == sorted([first, other])


def test_a_missing_object_is_not_found(store: MediaStore) -> None:
    with pytest.raises(NotFound):
        store.get("0" * 64)
    assert not store.exists("0" * 64)


@pytest.mark.parametrize("key", ["../../etc/passwd", "abc", "A" * 64, "0" * 63 + "/", ""])
def test_a_malformed_key_is_not_found(store: MediaStore, key: str) -> None:
    store.put(b"abc")
    with pytest.raises(NotFound):
        store.get(key)
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.delete(key)


def test_delete_is_idempotent(store: MediaStore) -> None:
    key = store.put(b"to be deleted")
    kept = store.put(b"to be kept")
    store.delete(key)
    store.delete(key)
    store.delete("f" * 64)  # never stored
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.get(key)
    assert store.get(kept) == b"to be kept"


def test_older_than_lists_only_old_objects(store: MediaStore) -> None:
    key = store.put(b"recent")
    assert list(store.older_than(3600)) == []  # stored a moment ago
    assert list(store.older_than(-60)) == [key]  # a cut-off in the future takes all
    store.delete(key)
    assert list(store.older_than(-60)) == []


def test_storing_bytes_again_makes_them_young_again(store: MediaStore) -> None:
    """A request that sends an image already stored keeps it from the clean-up's grace."""
    key = store.put(b"sent twice")
    time.sleep(1.2)  # S3's LastModified has a resolution of one second
    assert (store.age(key) or 0.0) >= 1.0
    assert store.put(b"sent twice") == key
    assert (store.age(key) or 99.0) < 1.0
    assert list(store.older_than(1.0)) == []
    assert store.age("0" * 64) is None
    assert store.age("not a key") is None


def test_the_clean_up_checks_again_just_before_it_deletes(
    migrated_url: str, tmp_path: Path
) -> None:
    """An image the clean-up found old and unused is kept when, before the delete, a request
    sends it again (young again) or commits a row that refers to it."""
    from store.db import make_engine, make_session_factory
    from store.tables import Collection, Document, DocumentMedia
    from workers.queries import cleanup_media

    store = LocalMediaStore(tmp_path / "media")
    settings = Settings(database_url=migrated_url, media_root=tmp_path / "media")
    sessions = make_session_factory(make_engine(migrated_url))
    with sessions.begin() as session:
        collection = Collection(name="c", recall_model="m", rerank_k=5, rerank_weight=0.1)
        session.add(collection)
    sent_again, referenced, unused = (store.put(data) for data in (b"a", b"b", b"c"))
    past = time.time() - settings.media_grace_seconds - 60
    for key in (sent_again, referenced, unused):
        path = store.root / key[:2] / key[2:4] / key
        os.utime(path, (past, past))

    class Interleaved(LocalMediaStore):
        """Requests act after the clean-up found the images unused, before its deletes."""

        acted = False

        def age(self, key: str) -> float | None:
            if not self.acted:
                self.acted = True
                self.put(b"a")  # the same image in a new request
                with sessions.begin() as session:  # another request commits its document
                    cid = session.query(Collection.id).scalar()
                    part = DocumentMedia(position=0, kind="image", key=referenced)
                    doc = Document(
                        collection_id=cid, external_id="d", image_key=referenced, media=[part]
                    )
                    session.add(doc)
            return super().age(key)

    rt = SimpleNamespace(settings=settings, media=Interleaved(store.root), sessions=sessions)
    assert cleanup_media(rt) == 1  # type: ignore[arg-type]
    assert store.exists(sent_again)
    assert store.exists(referenced)
    assert not store.exists(unused)


def test_a_large_object_round_trips(store: MediaStore) -> None:
    data = os.urandom(10 * 1024 * 1024)
    key = store.put(data)
    assert store.get(key) == data
    if isinstance(store, S3MediaStore):  # streamed in parts, not one 10 MB request
        head = store.client.head_object(Bucket=store.bucket, Key=store._name(key))
        assert "-" in head["ETag"]


def test_the_default_backend_is_the_local_folder(tmp_path: Path) -> None:
    store = open_media_store(Settings(media_root=tmp_path))
    assert isinstance(store, LocalMediaStore)
    key = store.put(b"abc")
    assert (tmp_path / key[:2] / key[2:4] / key).read_bytes() == b"abc"


def test_an_s3_store_without_bucket_or_credentials_is_refused() -> None:
    with pytest.raises(MediaConfigError) as refused:
        open_media_store(Settings(media_backend="s3"))
    for name in ("BUCKET", "ACCESS_KEY", "SECRET_KEY"):
        assert f"UMARVEL_MEDIA_S3_{name}" in str(refused.value)
    with pytest.raises(MediaConfigError, match="UMARVEL_MEDIA_S3_SECRET_KEY"):
        open_media_store(Settings(media_backend="s3", media_s3_bucket="b", media_s3_access_key="a"))


def test_objects_are_named_like_the_local_files_under_the_prefix(s3_url: str) -> None:
    settings = s3_settings(s3_url)
    store = open_media_store(settings)
    other = open_media_store(settings.model_copy(update={"media_s3_prefix": "elsewhere/"}))
    assert isinstance(store, S3MediaStore)
    assert isinstance(other, S3MediaStore)
    key = store.put(b"abc")
    other.put(b"xyz")
    # Not media of this store: a stray object, and one in the wrong folder.
    store.client.put_object(Bucket=store.bucket, Key="umarvel/media/notes.txt", Body=b"x")
    store.client.put_object(Bucket=store.bucket, Key=f"umarvel/media/{'e' * 64}", Body=b"x")
    names = [
        item["Key"]
        for item in store.client.list_objects_v2(Bucket=store.bucket, Prefix="umarvel/")["Contents"]
    ]
    assert f"umarvel/media/{key[:2]}/{key[2:4]}/{key}" in names
    assert list(store.older_than(-60)) == [key]
    assert not other.exists(key)


def test_transient_errors_are_retried_with_the_standard_mode(s3_url: str) -> None:
    store = open_media_store(s3_settings(s3_url))
    assert isinstance(store, S3MediaStore)
    config = store.client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert config.connect_timeout == 5.0
    assert config.read_timeout == 30.0

    requests: list[str] = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        failing = S3MediaStore(
            "media",
            access_key="a",
            secret_key="s",
            endpoint=f"http://127.0.0.1:{server.server_address[1]}",
            max_attempts=3,
        )
        with pytest.raises(Unavailable):
            failing.get("0" * 64)
    finally:
        server.shutdown()
        server.server_close()
    assert len(requests) == 3


def test_a_stopped_server_fails_cleanly(tmp_path: Path) -> None:
    with s3_server(tmp_path / "moto.log") as url:
        store = S3MediaStore(
            "media",
            access_key="a",
            secret_key="s",
            endpoint=url,
            create_bucket=True,
            max_attempts=2,
            connect_timeout=1,
            read_timeout=1,
        )
        key = store.put(b"abc")
        assert store.get(key) == b"abc"
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable") as raised:
        store.get(key)
    assert url.split("//")[1] not in raised.value.message  # where it is stays in the log
    with pytest.raises(Unavailable):
        store.put(b"new bytes")
    with pytest.raises(Unavailable):
        list(store.older_than(0))
    assert time.monotonic() - started < 30


def test_a_server_that_never_answers_times_out() -> None:
    # Connections are queued by the kernel and never served: only the read timeout ends it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        store = S3MediaStore(
            "media",
            access_key="a",
            secret_key="s",
            endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}",
            max_attempts=1,
            read_timeout=1,
        )
        started = time.monotonic()
        with pytest.raises(Unavailable):
            store.get("0" * 64)
        assert time.monotonic() - started < 10


def test_the_api_and_the_workers_use_the_configured_backend(s3_url: str, tmp_path: Path) -> None:
    from api.services import Services
    from workers.runtime import Runtime

    settings = s3_settings(s3_url, database_url=f"sqlite:///{tmp_path}/umarvel.db")
    assert isinstance(Runtime(settings).media, S3MediaStore)
    assert isinstance(Services.from_settings(settings).media, S3MediaStore)

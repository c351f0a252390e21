"""Text normalisation, image limits and resize rule, media store, settings."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InvalidRequest, NotFound, PayloadTooLarge
from core.settings import Settings
from devkit.samples import shape_image
from media.images import MAX_PIXELS, MIN_PIXELS, decode_image, prepare_image, smart_resize
from media.store import LocalMediaStore
from mllm.text import format_string


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  a red car ", "A red car."),
        ('"quoted text"', "Quoted text."),
        ("Is it?", "Is it?"),
        ("wow!", "Wow!"),
        ("done.", "Done."),
        ("line\r\n", "Line."),
        ("", ""),
        (
            "<instruction_start>Find it.<instruction_end> ",
            "<instruction_start>Find it.<instruction_end>.",
        ),
    ],
)
def test_format_string(raw: str, expected: str) -> None:
    assert format_string(raw) == expected


@pytest.mark.parametrize(
    ("height", "width"), [(10, 10), (56, 84), (1000, 700), (3000, 4000), (30, 5000)]
)
def test_smart_resize_bounds(height: int, width: int) -> None:
    h, w = smart_resize(height, width)
    assert h % 28 == 0
    assert w % 28 == 0
    assert MIN_PIXELS <= h * w <= MAX_PIXELS
    # The aspect ratio is kept up to the rounding to multiples of 28.
    assert math.isclose(h / w, height / width, rel_tol=0.5)


def test_smart_resize_rejects_extreme_aspect() -> None:
    with pytest.raises(InvalidRequest, match="aspect ratio"):
        smart_resize(10, 2500)


def test_prepare_image_resizes_to_multiples_of_28() -> None:
    image = prepare_image(Image.new("RGB", (90, 61), "red"))
    assert image.size == (84, 56)


def test_decode_image_limits() -> None:
    png = shape_image("red", "circle")
    assert decode_image(png, max_bytes=10**6, max_pixels=10**6).size == (96, 96)
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(png, max_bytes=10, max_pixels=10**6)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(png, max_bytes=10**6, max_pixels=95 * 95)
    with pytest.raises(InvalidRequest, match="could not be decoded"):
        decode_image(b"not an image", max_bytes=10**6, max_pixels=10**6)
    truncated = png[: len(png) // 2]
    with pytest.raises(InvalidRequest):
        decode_image(truncated, max_bytes=10**6, max_pixels=10**6)


def test_decode_image_refuses_a_decompression_bomb() -> None:
    # A 20000 x 20000 image compresses to a few hundred kB of PNG.
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    with pytest.raises(PayloadTooLarge):
        decode_image(buffer.getvalue(), max_bytes=10**8, max_pixels=64_000_000)


def test_media_store_is_content_addressed(tmp_path) -> None:
    store = LocalMediaStore(tmp_path)
    first = store.put(b"abc")
    assert store.put(b"abc") == first
    assert store.get(first) == b"abc"
    assert store.exists(first)
    assert len(list(tmp_path.rglob("*"))) == 3  # two levels of folders and one file
    assert not store.exists("../../etc/passwd")
    with pytest.raises(NotFound):
        store.get("0" * 64)


def test_settings_read_the_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UMARVEL_MAX_TOP_K", "7")
    monkeypatch.setenv("UMARVEL_DEVICE", "cpu")
    settings = Settings()
    assert settings.max_top_k == 7
    assert settings.device == "cpu"
    assert settings.recall_processor_path == settings.recall_model


def test_visibility_timeout_must_outlast_tasks() -> None:
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        Settings(task_time_limit=600, visibility_timeout=600)


def test_docs_configuration_documents_every_setting() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [n for n in Settings.model_fields if f"`UMARVEL_{n.upper()}`" not in page]
    assert missing == []


def test_ingestion_waits_for_a_gap_in_query_traffic(redis_url: str) -> None:
    import threading
    import time

    from store.redis import make_redis
    from store.traffic import mark_queries_active, yield_to_queries

    client = make_redis(redis_url)
    assert yield_to_queries(client, longest=2.0) < 0.1  # no query: no wait
    mark_queries_active(client)  # one query step: wait for its mark to lapse, no longer
    assert 0.1 < yield_to_queries(client, longest=2.0) < 1.0
    stop = threading.Event()

    def stream() -> None:  # queries without a pause
        while not stop.is_set():
            mark_queries_active(client)
            time.sleep(0.05)

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        waited = yield_to_queries(client, longest=0.5)
    finally:
        stop.set()
        streaming.join()
    assert 0.5 <= waited < 1.5  # ingestion still moves, one piece per ``longest``


def test_settings_never_show_their_secrets() -> None:
    from core.settings import Settings

    settings = Settings(
        database_url="postgresql+psycopg://umarvel:db-pass@db/umarvel",
        redis_url="redis://:redis-pass@redis:6379/0",
        milvus_token="root:milvus-pass",
        media_s3_access_key="access-id",
        media_s3_secret_key="s3-pass",
    )
    shown = f"{settings!r} {settings}"
    for secret in ("db-pass", "redis-pass", "milvus-pass", "access-id", "s3-pass"):
        assert secret not in shown
    assert "postgresql+psycopg://umarvel:***@db/umarvel" in shown
    assert settings.media_s3_secret_key.get_secret_value() == "s3-pass"  # kept, not shown
    assert "media_s3_secret_key=SecretStr('**********')" in repr(settings)

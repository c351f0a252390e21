"""The umarvel command line: keys, migrations, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from core.settings import get_settings
from store.db import make_engine, make_session_factory, session_scope
from store.fences import Fences, collection_record
from store.keys import hash_key
from store.redis import make_redis
from store.tables import ApiKey


def test_keys_create_list_revoke(runner: CliRunner, migrated_url: str) -> None:
    created = runner.invoke(
        main, ["keys", "create", "ci", "--scope", "search", "--collection", "docs"]
    )
    assert created.exit_code == 0, created.output
    secret = created.output.strip().splitlines()[-1]
    assert secret.startswith("umk_")
    sessions = make_session_factory(make_engine(migrated_url))
    with session_scope(sessions) as session:
        row = session.scalar(select(ApiKey))
        assert row.key_hash == hash_key(secret)  # only the hash is stored
        assert (row.scopes, row.collections) == (["search"], ["docs"])
    listed = runner.invoke(main, ["keys", "list"])
    assert row.prefix in listed.output
    assert "active" in listed.output
    assert secret not in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", row.prefix])
    assert revoked.exit_code == 0
    assert "revoked" in runner.invoke(main, ["keys", "list"]).output
    missing = runner.invoke(main, ["keys", "revoke", "nope"])
    assert missing.exit_code == 1
    assert "Error: no API key 'nope'" in missing.output


def test_cache_clear_forgets_the_copies(runner: CliRunner, redis_url: str) -> None:
    fences = Fences(make_redis(redis_url))
    fences.client.flushdb()
    record = collection_record("docs")
    assert fences.fill(record, "searched", None, {"version": 1})
    assert fences.read([(record, "searched")])[0].value == {"version": 1}
    cleared = runner.invoke(main, ["cache", "clear"])
    assert (cleared.exit_code, cleared.output.strip()) == (0, "forgot 1 copies")
    assert fences.read([(record, "searched")])[0].value is None


def test_outbox_list_shows_failing_entries(runner: CliRunner, migrated_url: str) -> None:
    import json

    from store.tables import OutboxEntry

    sessions = make_session_factory(make_engine(migrated_url))
    with session_scope(sessions) as session:
        session.add(OutboxEntry(kind="drop", payload={"storage": "gone", "generations": [1]}))
        session.add(
            OutboxEntry(
                kind="delete",
                payload={"storage": "s", "generations": [1], "ids": ["a"]},
                attempts=8,
                last_error="MilvusException: collection not loaded",
            )
        )
    listed = runner.invoke(main, ["outbox", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.strip().endswith("2 entries")
    failing = runner.invoke(main, ["outbox", "list", "--failing", "--json"])
    (row,) = json.loads(failing.output)
    assert (row["kind"], row["attempts"]) == ("delete", 8)
    assert row["last_error"] == "MilvusException: collection not loaded"


def test_bad_scope_is_refused(runner: CliRunner) -> None:
    result = runner.invoke(main, ["keys", "create", "x", "--scope", "root"])
    assert result.exit_code == 2
    assert "root" in result.output


def test_tiny_models_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["tiny-models", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for arch in ("qwen2_vl", "qwen3_vl"):
        assert (tmp_path / arch / "model.safetensors").stat().st_size < 5_000_000
        assert (tmp_path / arch / "chat_template.jinja").exists()


API_COMMANDS = [
    ["collections", "create"],
    ["collections", "list"],
    ["collections", "show"],
    ["collections", "delete"],
    ["documents", "list"],
    ["documents", "facets"],
    ["documents", "export"],
    ["search"],
    ["ingest"],
    ["eval", "collection"],
]


@pytest.mark.parametrize("command", API_COMMANDS, ids=" ".join)
def test_api_commands_document_their_environment(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "UMARVEL_API_KEY" in result.output
    assert "UMARVEL_API" in result.output.replace("UMARVEL_API_KEY", "")


def test_version_and_the_top_level_help() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"umarvel, version {version('umarvel-search')}"
    assert "UMARVEL_API_KEY" in CliRunner().invoke(main, ["--help"]).output


@pytest.mark.parametrize(
    "command",
    [
        ["collections", "list"],
        ["collections", "show", "x", "--json"],
        ["collections", "create", "x"],
        ["collections", "delete", "x", "--yes"],
        ["search", "x", "--text", "a red car", "--json"],
        ["documents", "list", "x", "--filter", '{"year": 1}'],
        ["documents", "facets", "x", "year", "--json"],
        ["documents", "export", "x"],
    ],
    ids=" ".join,
)
def test_an_unreachable_api_is_one_line_and_exit_1(command: list[str]) -> None:
    from cli.stack import free_port

    api = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(main, [*command, "--api", api, "--key", "k"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot reach the API at {api}")
    assert "Traceback" not in result.output


def test_usage_errors_exit_2_before_any_request() -> None:
    runner = CliRunner()
    no_query = runner.invoke(main, ["search", "x", "--key", "k"])
    assert no_query.exit_code == 2
    assert "give --text, --image, --video, --like, or several" in no_query.output
    bad_field = runner.invoke(main, ["collections", "create", "x", "--field", "year", "--key", "k"])
    assert bad_field.exit_code == 2
    assert "NAME=TYPE" in bad_field.output
    bad_filter = runner.invoke(main, ["search", "x", "--text", "a", "--filter", "[1", "--key", "k"])
    assert bad_filter.exit_code == 2
    assert "not JSON" in bad_filter.output
    no_key = runner.invoke(main, ["collections", "list"], env={"UMARVEL_API_KEY": None})
    assert no_key.exit_code == 2
    assert "--key" in no_key.output


def test_an_unmigrated_or_unreachable_database_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("UMARVEL_REDIS_URL", redis_url)
    monkeypatch.setenv("UMARVEL_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        empty = CliRunner().invoke(main, ["keys", "list"])
        assert empty.exit_code == 1
        assert "is not migrated: run `umarvel db upgrade`" in empty.output
        monkeypatch.setenv("UMARVEL_DATABASE_URL", "postgresql+psycopg://u:secret@127.0.0.1:9/none")
        get_settings.cache_clear()
        down = CliRunner().invoke(main, ["keys", "list"])
        assert down.exit_code == 1
        assert down.output.startswith("Error: cannot use the database postgresql+psycopg://u:***@")
        assert "secret" not in down.output
        assert "Traceback" not in empty.output + down.output
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("UMARVEL_MODEL_RUNNERS", "-1", "UMARVEL_MODEL_RUNNERS: Input should be greater"),
        ("UMARVEL_TORCH_THREADS", "many", "UMARVEL_TORCH_THREADS: Input should be a valid integer"),
    ],
)
def test_a_setting_out_of_range_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["keys", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert result.output.startswith("Error: invalid settings: ")
    assert named in result.output
    assert "Traceback" not in result.output


def test_a_folder_of_images_and_videos_goes_in_batches_bounded_by_bytes(tmp_path: Path) -> None:
    import base64

    from cli.ingest import batches, folder_items
    from devkit.clips import make_clip
    from devkit.samples import shape_image

    (tmp_path / "a.png").write_bytes(shape_image("red", "circle", 32))
    (tmp_path / "b.webm").write_bytes(make_clip(64, 48, 8, 4, codec="libvpx-vp9", container="webm"))
    (tmp_path / "b.txt").write_text("a moving square\n")
    (tmp_path / "notes.md").write_text("not a document")
    docs = list(folder_items(tmp_path))
    assert [doc["id"] for doc in docs] == ["a.png", "b.webm"]
    assert docs[1]["text"] == "a moving square"
    (part,) = docs[1]["media"]
    assert part["kind"] == "video"
    assert base64.b64decode(part["data"]) == (tmp_path / "b.webm").read_bytes()

    sized = [
        {"id": str(n), "media": [{"kind": "video", "data": "x" * w}]}
        for n, w in enumerate([4, 4, 9, 1, 1, 1])
    ]
    found = batches(iter([*sized, "bad line"]), 3, 8)
    ids = [[doc["id"] if isinstance(doc, dict) else doc for doc in batch] for batch in found]
    assert ids == [["0", "1"], ["2"], ["3", "4", "5"], ["bad line"]]

"""The commands that talk to a running API through the Python client: ``umarvel
collections ...``, ``umarvel documents ...`` and ``umarvel search``. Read commands print a
table, or JSON with ``--json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from umarvel_client import Client, Collection, DocumentPage, Facets, SearchResult

FIELD_TYPES = ("int", "float", "str", "bool")

Filter = dict[str, Any] | None  # the --filter option's JSON object


def api_options(func: Any) -> Any:
    """``--api`` and ``--key`` of the commands that talk to a running API."""
    func = click.option(
        "--key",
        envvar="UMARVEL_API_KEY",
        show_envvar=True,
        required=True,
        help="An API key (admin scope to change collections and ingest).",
    )(func)
    return click.option(
        "--api",
        default="http://127.0.0.1:8000",
        show_default=True,
        envvar="UMARVEL_API",
        show_envvar=True,
        help="The API's base URL.",
    )(func)


def client_for(api: str, key: str) -> Client:
    return Client(api, key)


MODES = ["dense", "keyword", "hybrid"]  # core.contract.SearchMode


def _json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


@click.group()
def collections() -> None:
    """Collections of a running API: create, list, show, delete."""


@collections.command("create")
@click.argument("name")
@click.option("--description", default="", help="Free text shown in listings.")
@click.option("--recall-model", default=None, help="One of UMARVEL_ALLOWED_RECALL_MODELS.")
@click.option("--rerank/--no-rerank", default=True, show_default=True, help="Rerank by default.")
@click.option("--rerank-k", type=click.IntRange(1, 1000), default=None, help="Pairs reranked.")
@click.option("--rerank-weight", type=float, default=None, help="w in cosine + w * P(Yes).")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=TYPE",
    help=f"A metadata field search can filter on; TYPE is one of {', '.join(FIELD_TYPES)}. "
    "Repeat for several.",
)
@click.option(
    "--search-mode",
    type=click.Choice(MODES),
    default="dense",
    show_default=True,
    help="What queries rank by when they do not say.",
)
@api_options
@_json_option
def collections_create(
    name: str,
    description: str,
    recall_model: str | None,
    rerank: bool,
    rerank_k: int | None,
    rerank_weight: float | None,
    fields: tuple[str, ...],
    search_mode: str,
    api: str,
    key: str,
    as_json: bool,
) -> None:
    """Create the collection NAME (lower-case letters, digits, '_')."""
    metadata = dict(_field(spec) for spec in fields)
    defaults: dict[str, Any] = {"enabled": rerank}
    if rerank_k is not None:
        defaults["k"] = rerank_k
    if rerank_weight is not None:
        defaults["weight"] = rerank_weight
    created = client_for(api, key).collections.create(
        name,
        description=description,
        recall_model=recall_model,
        rerank=defaults,
        metadata_fields=metadata,
        search_mode=search_mode,
    )
    _show([created], as_json, one=True)


@collections.command("set-mode")
@click.argument("name")
@click.argument("mode", type=click.Choice(MODES))
@api_options
@_json_option
def collections_set_mode(name: str, mode: str, api: str, key: str, as_json: bool) -> None:
    """Make MODE the default search of collection NAME. Every document is keyword-indexed
    already: nothing is embedded again."""
    _show([client_for(api, key).collections.patch(name, search_mode=mode)], as_json, one=True)


def _field(spec: str) -> tuple[str, str]:
    name, sep, kind = spec.partition("=")
    if not sep or not name or kind not in FIELD_TYPES:
        raise click.BadParameter(
            f"{spec!r}: give NAME=TYPE with TYPE one of {', '.join(FIELD_TYPES)}",
            param_hint="--field",
        )
    return name, kind


@collections.command("list")
@api_options
@_json_option
def collections_list(api: str, key: str, as_json: bool) -> None:
    """Every collection the key may see, with its document counts."""
    _show(client_for(api, key).collections.list(), as_json)


@collections.command("show")
@click.argument("name")
@api_options
@_json_option
def collections_show(name: str, api: str, key: str, as_json: bool) -> None:
    """One collection: models, rerank defaults, fields, version, generation, counts."""
    found = client_for(api, key).collections.get(name)
    if as_json:
        _show([found], as_json, one=True)
        return
    rerank = found.rerank
    counts = found.documents
    rows = [
        ("name", found.name),
        ("description", found.description),
        ("recall model", found.recall_model),
        ("rerank", f"{'on' if rerank.enabled else 'off'}, k {rerank.k}, weight {rerank.weight}"),
        ("metadata fields", ", ".join(f"{k}:{v}" for k, v in found.metadata_fields.items())),
        ("version", str(found.version)),
        ("generation", str(found.generation)),
        (
            "documents",
            f"{counts.total} ({counts.indexed} indexed, {counts.pending} pending, "
            f"{counts.failed} failed)",
        ),
        ("reindex", json.dumps(found.reindex) if found.reindex else "-"),
        ("created", found.created_at),
    ]
    for label, value in rows:
        click.echo(f"{label:<16} {value or '-'}")


@collections.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@api_options
def collections_delete(name: str, yes: bool, api: str, key: str) -> None:
    """Delete the collection NAME, its documents and its vectors."""
    if not yes:
        click.confirm(f"Delete collection {name!r} and every document in it?", abort=True)
    client_for(api, key).collections.delete(name)
    click.echo(f"deleted collection {name}")


def _show(found: list[Collection], as_json: bool, one: bool = False) -> None:
    if as_json:
        rows = [c.raw for c in found]
        click.echo(json.dumps(rows[0] if one else rows))
        return
    click.echo(f"{'name':<24} {'documents':>9} {'indexed':>8} {'version':>7} {'gen':>4}  model")
    for c in found:
        click.echo(
            f"{c.name:<24} {c.documents.total:>9} {c.documents.indexed:>8} {c.version:>7} "
            f"{c.generation:>4}  {c.recall_model}"
        )


def _filter(_ctx: click.Context, _param: click.Parameter, text: str | None) -> Any:
    """The ``--filter`` option's JSON object, or a usage error."""
    if text is None:
        return None
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(found, dict):
        raise click.BadParameter("must be a JSON object")
    return found


def _filter_option(func: Any) -> Any:
    return click.option(
        "--filter",
        "filter_",
        callback=_filter,
        default=None,
        help='Metadata filter, JSON: \'{"year": {"gte": 2020}}\'.',
    )(func)


def _selection_options(func: Any) -> Any:
    """``--filter`` and ``--status``: which documents a ``documents`` command reads."""
    func = click.option(
        "--status",
        type=click.Choice(["pending", "indexed", "failed"]),
        default=None,
        help="Only documents in this state.",
    )(func)
    return _filter_option(func)


@click.group()
def documents() -> None:
    """Documents of a collection in a running API: list, count per value, export."""


_limit_option = click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True
)


@documents.command("list")
@click.argument("name")
@_selection_options
@_limit_option
@click.option("--cursor", default=None, help="Continue from a page's next cursor.")
@api_options
@_json_option
def documents_list(
    name: str,
    filter_: Filter,
    status: str | None,
    limit: int,
    cursor: str | None,
    api: str,
    key: str,
    as_json: bool,
) -> None:
    """A page of the documents of NAME matching --filter, in the order the server keeps
    them; the next page with --cursor."""
    page = client_for(api, key).documents.list(
        name, filter=filter_, status=status, cursor=cursor, limit=limit
    )
    _page(page, as_json)


def _page(page: DocumentPage, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(page.raw))
        return
    click.echo(f"{'document':<24} {'status':<8} {'metadata':<32}  text")
    for doc in page.documents:
        metadata = json.dumps(doc.metadata, ensure_ascii=False)
        metadata = metadata if len(metadata) <= 32 else metadata[:31] + "…"
        text = (doc.text or "").replace("\n", " ")[:60]
        click.echo(f"{doc.id:<24} {doc.status:<8} {metadata:<32}  {text}")
    if page.next_cursor is not None:
        click.echo(f"more: --cursor {page.next_cursor}")


@documents.command("facets")
@click.argument("name")
@click.argument("field")
@_selection_options
@_limit_option
@api_options
@_json_option
def documents_facets(
    name: str,
    field: str,
    filter_: Filter,
    status: str | None,
    limit: int,
    api: str,
    key: str,
    as_json: bool,
) -> None:
    """How many documents of NAME matching --filter hold each value of FIELD (a declared
    metadata field), the most frequent first."""
    found = client_for(api, key).documents.facets(
        name, field, filter=filter_, status=status, limit=limit
    )
    _counts(found, as_json)


def _counts(found: Facets, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(found.raw))
        return
    click.echo(f"{'count':>9}  {found.field}")
    for value in found.values:
        click.echo(f"{value.count:>9}  {json.dumps(value.value, ensure_ascii=False)}")
    click.echo(f"{found.nulls:>9}  (no value)")
    if found.truncated:
        click.echo(f"rarer values left out: raise --limit (now {len(found.values)})")


@documents.command("export")
@click.argument("name")
@_selection_options
@click.option(
    "--media",
    type=click.Choice(["urls", "inline"]),
    default="urls",
    show_default=True,
    help="Media parts as their URLs, or inline as base64 (lines ingestible as they are).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="The JSONL file to write; - for standard output.",
)
@api_options
def documents_export(
    name: str,
    filter_: Filter,
    status: str | None,
    media: str,
    output: str,
    api: str,
    key: str,
) -> None:
    """Every document of NAME matching --filter as JSONL, one document a line, in the shape
    `umarvel ingest` and the ingestion endpoint take."""
    with click.open_file(output, "wb") as out:
        count = client_for(api, key).documents.export(
            name, out, filter=filter_, status=status, media=media
        )
    where = "standard output" if output == "-" else output
    click.echo(f"exported {count} documents to {where}", err=True)


@click.command()
@click.argument("collection")
@click.option("--text", default=None, help="The query text.")
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An image file (with --text: a composed query).",
)
@click.option(
    "--video",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A video file (MP4/MOV, WebM/Matroska, AVI): video -> video or video -> text.",
)
@click.option(
    "--candidates",
    type=click.Choice(["any", "text", "image", "image,text", "video"]),
    default=None,
    help="What the documents are (picks the default instruction); video: text -> video.",
)
@click.option("--instruction", default=None, help="What to find (default: the task's).")
@click.option("--top-k", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--rerank/--no-rerank", default=None, help="Default: the collection's.")
@click.option("--rerank-weight", type=float, default=None)
@_filter_option
@click.option("--mode", type=click.Choice(MODES), default=None, help="Default: the collection's.")
@click.option(
    "--fusion",
    type=click.Choice(["rrf", "weighted"]),
    default=None,
    help="How --mode hybrid merges its rankings (default rrf).",
)
@click.option(
    "--keyword-weight", type=click.FloatRange(0, 1), default=None, help="--fusion weighted."
)
@click.option("--like", multiple=True, metavar="ID", help="A stored document to search like.")
@click.option(
    "--unlike", multiple=True, metavar="ID", help="A stored document to search away from."
)
@click.option("--offset", type=click.IntRange(0), default=0, help="Results skipped: the page.")
@click.option("--group-by", default=None, metavar="FIELD", help="One group per value of FIELD.")
@click.option("--group-size", type=click.IntRange(1, 100), default=None, help="Hits per group.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait.")
@api_options
@_json_option
def search(
    collection: str,
    text: str | None,
    image: Path | None,
    video: Path | None,
    candidates: str | None,
    instruction: str | None,
    top_k: int,
    rerank: bool | None,
    rerank_weight: float | None,
    filter_: Filter,
    mode: str | None,
    fusion: str | None,
    keyword_weight: float | None,
    like: tuple[str, ...],
    unlike: tuple[str, ...],
    offset: int,
    group_by: str | None,
    group_size: int | None,
    timeout: float,
    api: str,
    key: str,
    as_json: bool,
) -> None:
    """Search COLLECTION by --text, --image, both, a --video, or stored documents (--like);
    print the ranked documents (a video with its best-matching time span)."""
    if text is None and image is None and video is None and not like:
        raise click.UsageError("give --text, --image, --video, --like, or several")
    fusion_options: dict[str, Any] | None = None
    if fusion is not None or keyword_weight is not None:
        fusion_options = {"method": fusion or "weighted"}
        if keyword_weight is not None:
            fusion_options["keyword_weight"] = keyword_weight
    options: dict[str, Any] | None = None
    if rerank is not None or rerank_weight is not None:
        options = {"enabled": True if rerank is None else rerank}
        if rerank_weight is not None:
            options["weight"] = rerank_weight
    result = client_for(api, key).search(
        collection,
        text=text,
        image=image,
        video=video,
        candidates=candidates,
        instruction=instruction,
        top_k=top_k,
        rerank=options,
        filter=filter_,
        mode=mode,
        fusion=fusion_options,
        like=like,
        unlike=unlike,
        offset=offset,
        group_by=group_by,
        group_size=group_size,
        timeout=timeout,
    )
    _hits(result, as_json)


def _hits(result: SearchResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.raw))
        return
    timings = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in result.timings.items())
    cached = " (cached)" if result.cached else ""
    click.echo(f"job {result.job_id}: {result.status}{cached}; {timings or 'no timings'}")
    grouped = any(hit.group is not None for hit in result.hits)
    group = f" {'group':<12}" if grouped else ""
    click.echo(
        f"{'rank':>4}  {'document':<24} {'cosine':>8} {'keyword':>8} {'p_yes':>7} {'score':>8}"
        f"{group}  text"
    )
    for hit in result.hits:
        text = (hit.text or "").replace("\n", " ")[:60]
        if hit.segment is not None:
            text = f"[{hit.segment['start']:.1f}-{hit.segment['end']:.1f} s] {text}"
        value = f" {hit.group if hit.group is not None else '-'!s:<12}" if grouped else ""
        click.echo(
            f"{hit.rank:>4}  {hit.document_id:<24} {_number(hit.cosine, 8)} "
            f"{_number(hit.keyword, 8)} {_number(hit.p_yes, 7)} {hit.score:>8.4f}{value}  {text}"
        )


def _number(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"

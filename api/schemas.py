"""Request bodies, validated with pydantic. Unknown fields are errors, not silently ignored."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from flask import Request, request
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from api.errors import validation_error
from api.validation import check_document_id, check_strings, parse_json
from core.errors import InvalidRequest, PayloadTooLarge
from media.kinds import KIND_NAME

COLLECTION_NAME = r"^[a-z][a-z0-9_]{0,47}$"
# core.contract.SearchMode's values: what queries rank by when they do not say.
SearchModeName = Literal["dense", "keyword", "hybrid"]
# What the documents searched are, for the default instruction (``recall.instructions``).
CandidateModality = Literal["any", "text", "image", "image,text", "video"]


DocumentId = Annotated[
    str, AfterValidator(check_document_id), Field(description="At most 256 characters.")
]


class Strict(BaseModel):
    """Unknown fields are errors; every string inside, keys too, must be storable text;
    values must have their JSON type (``false`` is no number, ``"1"`` no integer)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _storable_strings(cls, data: Any) -> Any:
        return check_strings(data)


class RerankDefaults(Strict):
    enabled: bool = True
    k: int | None = Field(None, ge=1, le=1000)
    weight: float | None = Field(None, ge=-100, le=100)


class CollectionCreate(Strict):
    name: str = Field(pattern=COLLECTION_NAME, description="Lower-case letters, digits, '_'.")
    description: str = Field("", max_length=2000)
    recall_model: str | None = Field(None, min_length=1, max_length=512)
    rerank: RerankDefaults = RerankDefaults()
    metadata_fields: dict[str, str] = Field(default_factory=dict)
    search_mode: SearchModeName = "dense"


class MediaIn(Strict):
    """One media part: its kind (``media.kinds``) and exactly one source of its bytes."""

    kind: str = Field(pattern=KIND_NAME, description="A registered media kind, e.g. image.")
    data: str | None = Field(None, description="Base64-encoded file.")
    path: str | None = Field(None, description="A file on the server, inside UMARVEL_INGEST_ROOTS.")
    file: str | None = Field(None, description="The name of a file part of a multipart request.")

    @model_validator(mode="after")
    def _one_source(self) -> MediaIn:
        if sum(s is not None for s in (self.data, self.path, self.file)) != 1:
            raise ValueError("give exactly one of data, path and file")
        return self


class DocumentIn(Strict):
    id: DocumentId
    text: str | None = None
    image: str | None = Field(None, description="Base64-encoded image file.")
    image_path: str | None = Field(
        None, description="A file on the server, inside UMARVEL_INGEST_ROOTS."
    )
    image_file: str | None = Field(
        None, description="The name of a file part of a multipart request."
    )
    media: list[MediaIn] = Field(
        default_factory=list,
        max_length=16,
        description="Media parts of any registered kind; image, image_path and image_file "
        "are a shorthand for one image part, which comes first.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_image_source(self) -> DocumentIn:
        sources = [s for s in (self.image, self.image_path, self.image_file) if s is not None]
        if len(sources) > 1:
            raise ValueError("give at most one of image, image_path and image_file")
        return self

    def parts(self) -> list[MediaIn]:
        """Every media part, the shorthand image first."""
        shorthand = (self.image, self.image_path, self.image_file)
        if all(source is None for source in shorthand):
            return list(self.media)
        # Validated already as this document's fields: not walked again (a base64 image is
        # long).
        image = MediaIn.model_construct(
            kind="image", data=self.image, path=self.image_path, file=self.image_file
        )
        return [image, *self.media]


class DocumentsRequest(Strict):
    """Items are validated one by one: an invalid one is reported, the others go on."""

    documents: list[DocumentIn] = Field(min_length=1)


class RerankOptions(Strict):
    enabled: bool | None = None
    k: int | None = Field(None, ge=1, le=1000)
    weight: float | None = Field(None, ge=-100, le=100)


class CollectionUpdate(Strict):
    """What may change on a live collection (the model and fields need a reindex)."""

    description: str | None = Field(None, max_length=2000)
    rerank: RerankOptions | None = None
    search_mode: SearchModeName | None = None


class ReindexRequest(Strict):
    """Re-embed every document into a new generation, optionally with another model."""

    recall_model: str | None = Field(None, min_length=1, max_length=512)


class FusionOptions(Strict):
    """How a hybrid query merges its dense and keyword rankings (``recall.hybrid``)."""

    method: Literal["rrf", "weighted"] = "rrf"
    k: int = Field(60, ge=1, le=1000, description="rrf: scores are 1 / (k + rank).")
    keyword_weight: float = Field(
        0.5, ge=0, le=1, description="weighted: (1 - w) * cosine + w * keyword / best keyword."
    )


MAX_EXAMPLES = 16


class QueryRequest(Strict):
    text: str | None = None
    image: str | None = Field(None, description="Base64-encoded image file.")
    video: str | None = Field(
        None, description="Base64-encoded video file (at most UMARVEL_MAX_QUERY_VIDEO_BYTES)."
    )
    instruction: str | None = Field(None, max_length=2000)
    use_default_instruction: bool = True
    candidates: CandidateModality = Field(
        "any",
        description="What the documents searched are; picks the default instruction. "
        "video: a text query is embedded as U-MARVEL's text-to-video evaluation embeds it.",
    )
    mode: SearchModeName | None = Field(
        None, description="dense, keyword or hybrid; default: the collection's search_mode."
    )
    fusion: FusionOptions | None = Field(None, description="hybrid only; default: rrf, k 60.")
    like: list[DocumentId] = Field(
        [], max_length=MAX_EXAMPLES, description="Ids of stored documents to search like."
    )
    unlike: list[DocumentId] = Field(
        [], max_length=MAX_EXAMPLES, description="Ids of stored documents to search away from."
    )
    include_examples: bool = Field(False, description="Keep like/unlike documents in results.")
    top_k: int | None = Field(None, ge=1, le=1_000_000)
    offset: int = Field(0, ge=0, le=1_000_000, description="Results skipped (the page's start).")
    group_by: str | None = Field(None, description="A declared metadata field.")
    group_size: int = Field(1, ge=1, le=100, description="Hits kept per group_by value.")
    rerank: RerankOptions = RerankOptions()
    filter: dict[str, Any] | None = None
    wait: float | None = Field(
        None,
        ge=0,
        le=86_400,
        description="Seconds to wait for the result before answering 202 with the job "
        "(default UMARVEL_QUERY_WAIT_SECONDS; 0: at once).",
    )

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        return value if value is None or value.strip() else None


class AuditQuery(Strict):
    """``GET /v1/audit``'s filters and cursor, from the query string."""

    model_config = ConfigDict(extra="forbid", strict=False)

    action: str | None = Field(None, max_length=64)
    key_id: int | None = Field(None, ge=0, le=2**31 - 1)  # SQL INTEGER columns
    outcome: Literal["ok", "failed", "refused"] | None = None
    target: str | None = Field(None, max_length=600)
    since: datetime | None = None
    until: datetime | None = None
    cursor: int | None = Field(None, ge=0, le=2**31 - 1, description="next_cursor of a page")
    limit: int = Field(100, ge=1, le=1000)


class PageQuery(Strict):
    """From the query string, where every value is text: converted, not strict."""

    model_config = ConfigDict(extra="forbid", strict=False)

    offset: int = Field(0, ge=0, le=1_000_000)
    limit: int | None = Field(None, ge=1, le=1_000_000)


class DocumentSelection(Strict):
    """Which of a collection's documents a listing, a count or an export reads, from the
    query string."""

    model_config = ConfigDict(extra="forbid", strict=False)

    filter: str | None = Field(
        None,
        description='A JSON filter in the query language, e.g. `{"year": {"lt": 2000}}`; '
        "applied to the documents' metadata in SQL.",
    )
    status: Literal["pending", "indexed", "failed"] | None = Field(
        None, description="Only documents in this state."
    )


class DocumentsQuery(DocumentSelection):
    """``GET /v1/collections/{name}/documents``: a page in the order of the documents' ids."""

    cursor: str | None = Field(
        None, max_length=64, description="`next_cursor` of the previous page, as it came."
    )
    limit: int = Field(100, ge=1, le=1000, description="Documents in the page.")


class FacetsQuery(DocumentSelection):
    """``GET /v1/collections/{name}/facets``: counts per value of a declared field."""

    field: str = Field(max_length=64, description="A declared metadata field.")
    limit: int = Field(100, ge=1, le=1000, description="Values counted, the most frequent first.")


class ExportQuery(DocumentSelection):
    """``GET /v1/collections/{name}/export``: every selected document as a JSONL line."""

    media: Literal["urls", "inline"] = Field(
        "urls",
        description="urls: media parts as their `/v1/media/{key}` URLs; inline: their bytes "
        "as base64 `data`, so that each line can be ingested again as it is.",
    )


Model = TypeVar("Model", bound=BaseModel)


def query_string(model: type[Model]) -> Model:
    """The request's query string as ``model``, or a 400 naming each bad parameter."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise validation_error(exc, prefix="query.") from None


def json_body(request: Request) -> Any:
    """The parsed JSON body, or a 400 that says what is wrong with it."""
    if not request.is_json:
        raise InvalidRequest("send a JSON body with Content-Type: application/json")
    return parse_json(request.get_data())


def request_parts(request: Request, limits: dict[str, int]) -> tuple[Any, dict[str, bytes]]:
    """The JSON body and its uploaded files: JSON, or multipart with a ``request`` JSON
    field and file parts named by ``limits`` (at most that many bytes each)."""
    if request.mimetype != "multipart/form-data":
        return json_body(request), {}
    raw = parse_json(request.form.get("request", "{}"), "the multipart 'request' field")
    uploads = {}
    for name, limit in limits.items():
        upload = request.files.get(name)
        if upload is None:
            continue
        data = upload.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"{name} is larger than {limit} bytes")
        uploads[name] = data
    return raw, uploads


def decode_base64(value: str, field: str) -> bytes:
    if value.startswith("data:") and "," in value:  # a data URL
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field} is not valid base64") from None

"""The media store in a bucket of an S3-compatible object store (AWS S3, MinIO, GCS).

Objects are named as the local store names its files, ``<prefix>/ab/cd/<sha256>``, so a
media folder copied into the bucket under the prefix (``aws s3 sync``) is a working store.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from core.errors import NotFound, Unavailable
from media.store import MediaConfigError, is_media_key, media_key

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}
_BUCKET_EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``Unavailable`` when the store could not be reached or kept failing
    transiently (botocore's retries are spent by then), ``exc`` itself otherwise."""
    # Clients are told what happened, never where: botocore's text names the endpoint and
    # the bucket; it goes to the log.
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        log.warning("media store unreachable: %s", exc)
        raise Unavailable("the media store is unreachable; retry shortly") from exc
    if isinstance(exc, ClientError) and (_status(exc) >= 500 or _code(exc) in _THROTTLED):
        log.warning("media store failing: %s", exc)
        raise Unavailable("the media store keeps failing; retry shortly") from exc
    raise exc


class S3MediaStore:
    """Content-addressed media in an S3 bucket, with the ``MediaStore`` contract of
    ``LocalMediaStore``: the same keys, ``NotFound`` for a missing object or a bad key.

    boto3 is the reference S3 client: the one API works with AWS S3, MinIO and GCS's
    S3-compatible XML API by ``endpoint``; its transfer manager streams large bodies as
    multipart uploads; and botocore's "standard" retry mode retries transient errors
    (connection failures, timeouts, 5xx, throttling) up to ``max_attempts`` attempts with
    jittered exponential back-off. Connect and read timeouts are bounded, so a store that
    is down fails a call with ``core.errors.Unavailable`` instead of hanging it; errors that
    are not transient (access denied, no such bucket) propagate as botocore raised them.
    """

    def __init__(
        self,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        endpoint: str = "",
        region: str = "us-east-1",
        prefix: str = "",
        create_bucket: bool = False,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        missing = [
            name
            for name, value in (
                ("UMARVEL_MEDIA_S3_BUCKET", bucket),
                ("UMARVEL_MEDIA_S3_ACCESS_KEY", access_key),
                ("UMARVEL_MEDIA_S3_SECRET_KEY", secret_key),
            )
            if not value
        ]
        if missing:
            raise MediaConfigError(
                "the S3 media store (UMARVEL_MEDIA_BACKEND=s3) needs " + ", ".join(missing)
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        options: dict[str, Any] = {}
        if endpoint:
            # Path-style URLs need no per-bucket DNS name (MinIO, GCS, local servers), and
            # the trailing checksums recent botocore sends by default are AWS's alone.
            options = {
                "s3": {"addressing_style": "path"},
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required",
            }
        config = Config(
            region_name=region,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            **options,
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint or None,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )
        self._transfer = TransferConfig(max_concurrency=4)
        if create_bucket:
            self._create_bucket(region)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3MediaStore:
        return cls(
            settings.media_s3_bucket,
            access_key=settings.media_s3_access_key.get_secret_value(),
            secret_key=settings.media_s3_secret_key.get_secret_value(),
            endpoint=settings.media_s3_endpoint,
            region=settings.media_s3_region,
            prefix=settings.media_s3_prefix,
            create_bucket=settings.media_s3_create_bucket,
        )

    def _create_bucket(self, region: str) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _MISSING and _status(exc) != 404:
                _reraise(exc)
        except BotoCoreError as exc:
            _reraise(exc)
        extra: dict[str, Any] = {}
        if region != "us-east-1":  # us-east-1 is the one region that must not be named
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if _code(exc) not in _BUCKET_EXISTS:  # created meanwhile by another process
                _reraise(exc)
        except BotoCoreError as exc:
            _reraise(exc)

    def _name(self, key: str) -> str:
        if not is_media_key(key):
            raise NotFound(f"no media object {key!r}")
        return f"{self.prefix}{key[:2]}/{key[2:4]}/{key}"

    def put(self, data: bytes) -> str:
        key = media_key(data)
        if self._touch(key):  # sent again now: young again for the clean-up's grace
            return key
        try:
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, self._name(key), Config=self._transfer
            )
        except (BotoCoreError, ClientError) as exc:
            _reraise(exc)
        return key

    def get(self, key: str) -> bytes:
        name = self._name(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"no media object {key!r}") from None
            _reraise(exc)
        except BotoCoreError as exc:
            _reraise(exc)

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata (HEAD), or None when it is not stored or the key is bad."""
        try:
            name = self._name(key)
        except NotFound:
            return None
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=name))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            _reraise(exc)
        except BotoCoreError as exc:
            _reraise(exc)

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _touch(self, key: str) -> bool:
        """Refresh the object's LastModified (S3 has no touch: a copy onto itself); False
        when it is not stored."""
        name = self._name(key)
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=name,
                CopySource={"Bucket": self.bucket, "Key": name},
                MetadataDirective="REPLACE",
            )
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            _reraise(exc)
        except BotoCoreError as exc:
            _reraise(exc)
        return True

    def age(self, key: str) -> float | None:
        head = self._head(key)
        return None if head is None else time.time() - float(head["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)  # no error when missing
        except (BotoCoreError, ClientError) as exc:
            _reraise(exc)

    def older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = str(item["Key"])
                    key = name.rsplit("/", 1)[-1]
                    if not is_media_key(key) or name != self._name(key):
                        continue  # not an object of this store
                    if item["LastModified"].timestamp() < cutoff:
                        yield key
        except (BotoCoreError, ClientError) as exc:
            _reraise(exc)

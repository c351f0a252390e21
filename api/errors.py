"""One error envelope for every 4xx and 5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from core.errors import InvalidRequest, UmarvelError
from store.db import lost_race

log = logging.getLogger(__name__)


def envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def validation_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """A pydantic error as an InvalidRequest whose details say which field and why."""
    details = [
        {"field": prefix + ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{d['field'] or 'body'}: {d['message']}" for d in details[:5])
    return InvalidRequest(f"invalid request: {summary}", details)


RACE_TRIES = 4


def retrying(view: Callable[..., Any]) -> Callable[..., Any]:
    """``view``, run again (with a short jittered pause) when its transaction lost a race."""

    @functools.wraps(view)
    def run(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, RACE_TRIES + 1):
            try:
                return view(*args, **kwargs)
            except DBAPIError as exc:
                reason = lost_race(exc)
                if reason is None or attempt == RACE_TRIES:
                    raise
                log.warning("retrying after %s (try %d)", reason, attempt)
                time.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    return run


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(UmarvelError)
    def _umarvel(exc: UmarvelError) -> Any:
        headers = {}
        if isinstance(exc.details, dict) and "retry_after" in exc.details:
            headers["Retry-After"] = str(exc.details["retry_after"])
        return jsonify(envelope(exc.code, exc.message, exc.details)), exc.status, headers

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        err = validation_error(exc)
        return jsonify(envelope(err.code, err.message, err.details)), err.status

    @app.errorhandler(redis.RedisError)
    def _redis(exc: redis.RedisError) -> Any:
        log.error("Redis unavailable: %s", exc)
        body = envelope("unavailable", "the cache and task queue (Redis) are unavailable; retry")
        return jsonify(body), 503, {"Retry-After": "5"}

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError) -> Any:
        reason = lost_race(exc)
        if reason is not None:  # still losing after every retry: say so, it is not an outage
            body = envelope("conflict", f"the request lost a race: {reason}; retry")
            return jsonify(body), 409, {"Retry-After": "1"}
        if not isinstance(exc, OperationalError):
            log.exception("database error")
            return jsonify(envelope("internal_error", "internal server error")), 500
        log.error("database unavailable: %s", exc)
        body = envelope("unavailable", "the metadata database is unavailable; retry")
        return jsonify(body), 503, {"Retry-After": "5"}

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        response = jsonify(envelope(code, exc.description or exc.name or "error"))
        # The headers the error itself carries (a 405's Allow, say), but not its HTML type.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return response, exc.code or 500, headers

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error")
        return jsonify(envelope("internal_error", "internal server error")), 500

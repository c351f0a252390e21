"""A bare Flask app with one route that does one Redis GET: the floor for a cached answer."""

from __future__ import annotations

import argparse

import redis
from flask import Flask, Response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis)
    app = Flask("bare")

    @app.post("/get/<key>")
    def get(key: str) -> Response:
        return Response(client.get(key) or b"{}", mimetype="application/json")

    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", args.port, app, threaded=True)


if __name__ == "__main__":
    main()

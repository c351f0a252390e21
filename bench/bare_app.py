"""A bare Flask app with one route that does one Redis GET: the floor for a cached answer.

python -m bench.bare_app --port P --redis URL            (the development server)
gunicorn 'bench.bare_app:create_app("redis://...")'      (as the API under gunicorn)
"""

from __future__ import annotations

import argparse

import redis
from flask import Flask, Response


def create_app(redis_url: str) -> Flask:
    client = redis.Redis.from_url(redis_url)
    app = Flask("bare")

    @app.post("/get/<key>")
    def get(key: str) -> Response:
        return Response(client.get(key) or b"{}", mimetype="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", args.port, create_app(args.redis), threaded=True)


if __name__ == "__main__":
    main()

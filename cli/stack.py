"""The embedded stack: milvus-lite server, a recall and a rerank worker, and the API.

Used by ``umarvel demo`` and by the integration tests. Each part is a real process; the
stack stops every process it started, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from core.settings import Settings

# One worker process per model: the recall worker also consumes the ingest queue, unless
# the stack runs a dedicated ingest worker.
WORKER_QUEUES = ("recall", "rerank")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f} s")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class MilvusStandalone:
    """The real Milvus standalone server of the PyPI ``milvus`` package (Milvus 2.3.5 with
    an embedded etcd and local storage) in ``workdir``, for tests and benchmarks against a
    server rather than milvus-lite. Its etcd ports (2379, 2380) are fixed, so one runs per
    machine.

    The package's own launcher (``milvus-server``) probes each port by binding it without
    ``SO_REUSEADDR`` and silently moves to the next free one: started again within TIME_WAIT
    of a kill, the server came back on other ports and no client found it. So the launcher's
    configuration is written once, on the first start, with the proxy port given; every start
    then runs the server binary itself on that configuration, and a restart (``kill`` then
    ``start``, as a supervisor would) keeps every port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    session_ttl: int = 30  # seconds; see ``_configure``
    proc: subprocess.Popen[bytes] | None = None

    ETCD_PORTS = (2379, 2380)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> Path:
        return self.workdir / "data"

    def start(self, timeout: float = 240.0) -> MilvusStandalone:
        taken = [port for port in self.ETCD_PORTS if _port_open(port)]
        if taken:
            raise RuntimeError(f"ports {taken} are taken: another Milvus standalone runs here")
        if not (self.base / "configs" / "milvus.yaml").exists():
            self._configure()
        binary = self.base / "bin" / "milvus"
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),  # /healthz is served there
            "MILVUS_RUN_DIR": str(self.base / "run"),
            "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        }
        with open(self.workdir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "run", "standalone"],
                cwd=self.base,  # the server reads configs/milvus.yaml from here
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._answers, timeout, "Milvus standalone", self.proc)
        return self

    def _configure(self) -> None:
        """Write the server's configuration and unpack its binaries (the launcher's own
        steps), with the proxy on ``port``; every other port as the launcher picks it."""
        try:
            import milvus
        except ImportError as exc:
            raise RuntimeError("milvus is not installed (pip install -e '.[dev]')") from exc
        config = milvus.MilvusServerConfig(data_dir=str(self.base), proxy_port=self.port)
        # How long a killed server's sessions outlive it in etcd: a server started again
        # serves its collections only once the old sessions expired (Milvus' default 30 s).
        config.set("common.session.ttl", self.session_ttl)
        config.resolve()
        milvus._initialize_data_files(config.base_data_dir)

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, timeout=2)
        try:
            client.list_collections()
            return True
        finally:
            client.close()

    def healthy(self) -> bool:
        """The server's own health endpoint answers OK (what an orchestrator probes)."""
        try:
            answer = requests.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)
        except requests.RequestException:
            return False
        return answer.ok and "OK" in answer.text

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would; ``start`` brings it back on its ports."""
        if self.proc is not None:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if anything is left after
        ``timeout`` (Milvus 2.3.5 can take minutes to stop on SIGTERM)."""
        if self.proc is None:
            return
        _signal_group(self.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()

    def __enter__(self) -> MilvusStandalone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RedisServer:
    """A throw-away ``redis-server`` on a loopback port, without persistence, that the caller
    owns: fault tests kill it and start it again, empty, on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    binary: str = "redis-server"
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(lambda: redis_reachable(self.url), timeout, "redis-server", self.proc)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: nothing is saved."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Stack:
    """Processes for one embedded deployment, configured through ``UMARVEL_*`` variables.

    ``env`` is every process's environment; ``process_env`` adds variables for one process,
    keyed by its name (``milvus``, ``api``, ``worker-recall``, ``worker-rerank``,
    ``worker-ingest``), as when each part runs on a host of its own with its own settings.
    ``settings()`` describes ``env`` alone.
    """

    workdir: Path
    env: dict[str, str]
    start_milvus: bool = True
    worker_suffix: str = ""
    worker_queues: tuple[str, ...] = WORKER_QUEUES
    log_dir: Path | None = None
    process_env: dict[str, dict[str, str]] = field(default_factory=dict)
    api_args: tuple[str, ...] = ()  # more options of `umarvel api` (``--workers 2``: gunicorn)
    api_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # each worker's /metrics
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def settings(self) -> Settings:
        values: dict[str, Any] = {
            key[len("UMARVEL_") :].lower(): value
            for key, value in self._env().items()
            if key.startswith("UMARVEL_")
        }
        for name, info in Settings.model_fields.items():  # lists travel as JSON, as in the env
            if name in values and typing.get_origin(info.annotation) is list:
                values[name] = json.loads(values[name])
        return Settings(**values)

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _spawn(
        self, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_dir = self.log_dir or self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop(); restarts append
        self._logs.append(log)
        proc = subprocess.Popen(
            args,
            env={**self._env(), **(extra_env or {}), **self.process_env.get(name, {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends its children too
        )
        self.processes[name] = proc
        return proc

    def start(self, timeout: float = 120.0) -> Stack:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        settings = self.settings()
        if not redis_reachable(settings.redis_url):
            raise RuntimeError(
                f"Redis is not reachable at {settings.redis_url}: start it (redis-server) "
                "or point UMARVEL_REDIS_URL at one"
            )
        if self.start_milvus:
            self.start_milvus_only(timeout)
        from store.db import upgrade

        upgrade(settings.database_url)
        for queue in self.worker_queues:
            self._spawn_worker(queue)
        api = self._spawn(
            "api",
            [sys.executable, "-m", "cli.main", "api", "--port", str(self.api_port), *self.api_args],
        )
        wait_until(
            lambda: requests.get(f"{self.api_url}/healthz", timeout=1).ok, timeout, "API", api
        )
        self._wait_for_workers(self.worker_queues, timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until ``/statusz`` answers 200: every queue has a worker with a warm model."""
        wait_until(
            lambda: requests.get(f"{self.api_url}/statusz", timeout=2).status_code == 200,
            timeout,
            "warm workers (/statusz)",
        )

    def create_key(self, scopes: tuple[str, ...], collections: tuple[str, ...] = ()) -> str:
        """A new API key in the stack's database; returns its secret."""
        from store.db import make_engine, make_session_factory, session_scope
        from store.keys import create_key

        engine = make_engine(self.settings().database_url)
        try:
            with session_scope(make_session_factory(engine)) as session:
                return create_key(session, "stack", scopes, collections or None)[1]
        finally:
            engine.dispose()

    def start_milvus_only(self, timeout: float = 60.0) -> None:
        """Serve ``workdir/milvus`` with milvus-lite on the port of UMARVEL_MILVUS_URI."""
        port = int(self.settings().milvus_uri.rsplit(":", 1)[1])
        proc = self._spawn(
            "milvus",
            [
                sys.executable,
                "-m",
                "cli.main",
                "milvus-lite",
                "--data-dir",
                str(self.workdir / "milvus"),
                "--port",
                str(port),
            ],
        )
        wait_until(lambda: _port_open(port), timeout, "milvus-lite server", proc)

    def kill(self, name: str) -> None:
        """SIGKILL one part (as a crash would) and forget it."""
        proc = self.processes.pop(name)
        _signal_group(proc, signal.SIGKILL)
        proc.wait()

    def start_worker(self, queue: str, timeout: float = 120.0) -> None:
        """(Re)start the worker of ``queue`` and wait until it answers."""
        self._spawn_worker(queue)
        self._wait_for_workers((queue,), timeout)

    def _spawn_worker(self, queue: str) -> None:
        name = f"{queue}{self.worker_suffix}@%h"
        args = [sys.executable, "-m", "cli.main", "worker", queue, "--name", name]
        if queue == "recall" and "ingest" in self.worker_queues:
            args.append("--no-ingest")
        port = self.metrics_ports.setdefault(queue, free_port())
        self._spawn(f"worker-{queue}", args, {"UMARVEL_WORKER_METRICS_PORT": str(port)})

    def _wait_for_workers(self, queues: tuple[str, ...], timeout: float) -> None:
        from core.celery_app import make_celery

        app = make_celery(self.settings())
        wanted = {f"{queue}{self.worker_suffix}" for queue in queues}

        def all_up() -> bool:
            for queue in queues:
                proc = self.processes[f"worker-{queue}"]
                if proc.poll() is not None:
                    raise RuntimeError(f"the {queue} worker exited with code {proc.returncode}")
            replies = app.control.ping(timeout=0.5) or []
            names = {next(iter(reply)).split("@")[0] for reply in replies}
            return wanted <= names

        try:
            wait_until(all_up, timeout, "Celery workers")
        finally:
            app.close()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group, then SIGKILL whatever is left."""
        for proc in self.processes.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # children of a stopped leader, if any
            proc.wait()
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0

"""What the engine needs from its host process (``workers.runtime.Runtime`` in a worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from core.contract import Task
from core.settings import Settings
from media.store import MediaStore


class Resources(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def sessions(self) -> Any: ...  # sessionmaker[Session]

    @property
    def redis(self) -> Any: ...

    @property
    def media(self) -> MediaStore: ...

    @property
    def index(self) -> Any: ...  # recall.index.MilvusIndex

    def embedder(self, model: str) -> Any: ...  # recall.embedder.Embedder

    def candidate_encoder(self, model: str) -> Callable[[list[Any]], Any]:
        """Embeds candidates with ``model`` (``Embedder.encode_candidates``'s contract)."""
        ...

    def send(self, task: Task, args: list[Any], countdown: float = 0.0) -> None: ...

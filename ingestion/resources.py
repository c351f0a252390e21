"""What the engine needs from its host process (``workers.runtime.Runtime`` in a worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from core.contract import Task
from core.settings import Settings
from media.store import MediaStore

if TYPE_CHECKING:
    import numpy as np
    import redis
    from sqlalchemy.orm import Session, sessionmaker

    from recall.index import MilvusIndex
    from recall.methods import RecallEmbedder
    from recall.prompts import Candidate


class Resources(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def sessions(self) -> sessionmaker[Session]: ...

    @property
    def redis(self) -> redis.Redis: ...

    @property
    def media(self) -> MediaStore: ...

    @property
    def index(self) -> MilvusIndex: ...

    def embedder(self, model: str) -> RecallEmbedder: ...

    def candidate_encoder(self, model: str) -> Callable[[list[Candidate]], np.ndarray]:
        """Embeds candidates with ``model`` (``RecallEmbedder.encode_candidates``'s contract)."""
        ...

    def send(self, task: Task, args: list[Any], countdown: float = 0.0) -> None: ...

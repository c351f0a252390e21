"""Default retrieval instructions per (query modality, candidate modality).

A request may give its own instruction; otherwise the recall service takes the default
for the query's modality and what the request says the candidates are ("any" when mixed).
A video query takes none: U-MARVEL's evaluation embedded videos without one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from recall.prompts import VIDEO_INSTRUCTION

DEFAULT_INSTRUCTIONS: dict[tuple[str, str], str] = {
    ("text", "text"): "Retrieve a passage that answers or matches the given text.",
    ("text", "image"): "Find an image that matches the given caption.",
    ("text", "image,text"): "Find an image and its description that match the given text.",
    ("text", "any"): "Find a document that matches the given text.",
    ("image", "text"): "Find a caption that describes the given image.",
    ("image", "image"): "Find an image that looks similar to the given image.",
    ("image", "image,text"): "Find an image and its description that match the given image.",
    ("image", "any"): "Find a document that matches the given image.",
    ("image,text", "text"): "Find a passage that answers the question about the given image.",
    ("image,text", "image"): "Find an image that matches the given image and its modification.",
    ("image,text", "image,text"): "Find a document that matches the given image and text.",
    ("image,text", "any"): "Find a document that matches the given image and text.",
    # MSR-VTT's and MSVD's, in the video evaluation's prompt format (``Query.protocol``).
    ("text", "video"): VIDEO_INSTRUCTION,
}


def default_instruction(query_modality: str, candidate_modality: str = "any") -> str:
    key = (query_modality, candidate_modality)
    if key not in DEFAULT_INSTRUCTIONS:
        key = (query_modality, "any")
    return DEFAULT_INSTRUCTIONS[key]


class InstructionTable:
    """M-BEIR's ``query_instructions.tsv``: instructions per (dataset id, query, candidate).

    Columns: query modality, candidate modality, dataset name, dataset id, then one or
    more instructions; the header line is skipped. Modalities are ``text``, ``image`` and
    ``image,text``.
    """

    def __init__(self, entries: dict[tuple[str, str, str], list[str]]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path) -> InstructionTable:
        entries: dict[tuple[str, str, str], list[str]] = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                parts = [p.strip() for p in line.rstrip("\r\n").split("\t")]
                if number == 1 and parts[0].lower().replace(" ", "_") == "query_modality":
                    continue
                if not any(parts):
                    continue
                if len(parts) < 5:
                    raise ValueError(f"{path}:{number}: expected at least 5 tab-separated columns")
                query_modality, cand_modality, _dataset, dataset_id = parts[:4]
                instructions = [p for p in parts[4:] if p]
                if not instructions:
                    raise ValueError(f"{path}:{number}: a row without any instruction")
                entries[(dataset_id, query_modality, cand_modality)] = instructions
        return cls(entries)

    def choices(self, dataset_id: str | int, query_modality: str, cand_modality: str) -> list[str]:
        key = (str(dataset_id), query_modality, cand_modality)
        if key not in self.entries:
            raise KeyError(
                f"no instruction for dataset {key[0]}, {query_modality} -> {cand_modality}"
            )
        return self.entries[key]

    def pick(
        self,
        dataset_id: str | int,
        query_modality: str,
        cand_modality: str,
        query_id: str | None = None,
        seed: int = 0,
    ) -> str:
        """A deterministic choice: the first instruction, or a seeded pick per query id."""
        options = self.choices(dataset_id, query_modality, cand_modality)
        if query_id is None:
            return options[0]
        digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
        return options[int.from_bytes(digest[:8], "big") % len(options)]

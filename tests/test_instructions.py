"""Default instructions and the M-BEIR instruction table."""

from __future__ import annotations

from pathlib import Path

import pytest

from recall.instructions import InstructionTable, default_instruction

TSV = (
    "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\tprompt_3\n"
    "text\timage\tVisualNews\t0\tIdentify the news image.\tFind a news photo.\t\n"
    "image\ttext\tMSCOCO\t9\tFind a caption for the image.\t\t\n"
    "image,text\timage\tCIRR\t7\tRetrieve the modified image.\tFind the edited one.\tA third.\n"
)


@pytest.fixture
def table(tmp_path: Path) -> InstructionTable:
    path = tmp_path / "query_instructions.tsv"
    path.write_text(TSV)
    return InstructionTable.load(path)


def test_loads_every_row(table: InstructionTable) -> None:
    assert table.choices(0, "text", "image") == ["Identify the news image.", "Find a news photo."]
    assert table.choices("9", "image", "text") == ["Find a caption for the image."]
    assert len(table.choices(7, "image,text", "image")) == 3


def test_picks_are_deterministic(table: InstructionTable) -> None:
    assert table.pick(0, "text", "image") == "Identify the news image."
    picks = {table.pick(7, "image,text", "image", query_id=f"q{i}") for i in range(30)}
    assert len(picks) == 3  # seeded per query: all instructions get used
    assert table.pick(7, "image,text", "image", query_id="q5") == table.pick(
        7, "image,text", "image", query_id="q5"
    )


def test_missing_keys_and_bad_rows(table: InstructionTable, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="dataset 3"):
        table.choices(3, "text", "text")
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\timage\tX\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        InstructionTable.load(bad)


def test_default_instructions_cover_every_pair() -> None:
    for query_modality in ("text", "image", "image,text"):
        for candidate_modality in ("text", "image", "image,text", "any", "unknown"):
            assert default_instruction(query_modality, candidate_modality).endswith(".")

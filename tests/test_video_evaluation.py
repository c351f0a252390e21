"""``umarvel eval msrvtt|msvd``: the literature's test layouts read, R@k text -> video and
video -> text computed as a direct ranking computes them, and the command's report."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main
from evaluation import video
from recall.embedder import Embedder, EmbedderConfig
from recall.prompts import VIDEO_INSTRUCTION, Query


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video-sets")
    for layout in ("msrvtt", "msvd"):
        video.write_sample(root / layout, layout, videos=4)
    return {layout: root / layout for layout in ("msrvtt", "msvd")}


def test_the_layouts_are_read_as_the_literature_writes_them(sets: dict[str, Path]) -> None:
    msrvtt = video.read_msrvtt(sets["msrvtt"])
    assert list(msrvtt.videos) == [f"video{7000 + n}" for n in range(4)]
    assert msrvtt.captions[1] == ("video7001", "a green square moving across the screen")
    assert msrvtt.nframes is None
    msvd = video.read_msvd(sets["msvd"])
    assert len(msvd.captions) == 8  # every caption of every test video is a query
    assert msvd.captions[:2] == [
        ("clip000", "a red square moves left"),
        ("clip000", "a red square moves slowly"),
    ]
    assert msvd.nframes == 12
    assert all(path.suffix == ".avi" for path in msvd.videos.values())


def test_bad_layouts_are_named(sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MSR-VTT test captions"):
        video.read_msrvtt(tmp_path)
    root = tmp_path / "msvd"
    video.write_sample(root, "msvd", videos=2)
    (root / "YouTubeClips" / "clip001.avi").unlink()
    with pytest.raises(FileNotFoundError, match="1 videos missing"):
        video.read_msvd(root)
    # A caption pickle that names code to run is refused, not run.
    (root / "msvd_data" / "raw-captions.pkl").write_bytes(pickle.dumps({"clip000": [Path("x")]}))
    with pytest.raises(pickle.UnpicklingError, match="not plain data"):
        video.read_msvd(root)


@pytest.mark.parametrize("layout", ["msrvtt", "msvd"])
def test_recall_matches_a_direct_ranking(
    sets: dict[str, Path], tiny_models: dict[str, Path], layout: str
) -> None:
    dataset = video.READERS[layout](sets[layout])
    config = EmbedderConfig(video_nframes=dataset.nframes)
    embedder = Embedder.from_pretrained(str(tiny_models["qwen3_vl"]), device="cpu", config=config)
    summary = video.evaluate(embedder, dataset, ks=(1, 2, 10))

    ids = list(dataset.videos)
    # Videos as queries give the candidates' vectors (the same prompt): an independent path.
    videos = embedder.encode_queries([Query(video=dataset.videos[v]) for v in ids])
    captions = embedder.encode_queries(
        [
            Query(text=c, instruction=VIDEO_INSTRUCTION, protocol="video")
            for _, c in dataset.captions
        ]
    )
    scores = captions @ videos.T
    truth = np.array([ids.index(v) for v, _ in dataset.captions])
    ranks = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    for k in (1, 2, 10):
        assert summary["text_to_video"][str(k)] == pytest.approx(float(np.mean(ranks < k)))
    assert summary["text_to_video"]["10"] == 1.0  # four videos
    assert (summary["videos"], summary["captions"]) == (4, len(dataset.captions))
    assert 0.0 <= summary["video_to_text"]["1"] <= summary["video_to_text"]["2"] <= 1.0


def test_the_command_writes_its_report(
    sets: dict[str, Path], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["eval", "msvd", str(sets["msvd"]), "--model", str(tiny_models["qwen3_vl"])]
    result = CliRunner().invoke(main, [*args, "--device", "cpu", "--output", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert (summary["dataset"], summary["nframes"], summary["frames"]) == ("msvd", 12, "reference")
    text = (out / "results.txt").read_text()
    row = next(line for line in text.splitlines() if line.startswith("text -> video"))
    assert row.split()[-3:] == [
        f"{100 * summary['text_to_video'][k]:.1f}" for k in ("1", "5", "10")
    ]
    assert "Paper R@1 text -> video: 7B 54.6, 4B 44.0." in text
    assert (out / "results.png").stat().st_size > 0

    listed = CliRunner().invoke(main, ["eval", "--help"]).output
    assert "msrvtt        R@1/5/10 text -> video" in listed  # each command says what it does
    missing = CliRunner().invoke(main, ["eval", "msrvtt", str(tmp_path)])
    assert missing.exit_code == 1
    assert "no MSR-VTT test captions under" in missing.output
    assert "Traceback" not in missing.output

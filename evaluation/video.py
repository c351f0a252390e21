"""Text-to-video retrieval on MSR-VTT and MSVD, as U-MARVEL's zero-shot evaluation measures it.

The paper reports R@1 text -> video: MSR-VTT 47.2 and MSVD 54.6 with the 7B model, 34.1 and
44.0 with the 4B. The sets are read in the layout the video-retrieval literature shares
(CLIP4Clip's release):

- **MSR-VTT** (1k-A test split): ``MSRVTT_JSFUSION_test.csv`` with columns ``key``,
  ``vid_key``, ``video_id``, ``sentence``: one caption per test video, 1,000 in all. Videos
  are ``<video_id>.mp4``.
- **MSVD** (test split): ``test_list.txt`` (a video id a line) and ``raw-captions.pkl`` (a
  dict of video id to captions, each a list of tokens, joined by spaces as U-MARVEL's
  loader joins them): every caption of a test video is a query (27,763 for 670 videos).
  Videos are ``<video_id>.avi``. U-MARVEL samples 12 frames of each (``nframes``).

Each file is looked for in the root and in its usual subfolder (``msrvtt_data``,
``msvd_data``); videos in ``MSRVTT_Videos``, ``YouTubeClips``, ``videos/all`` or
``videos``. Videos are embedded one at a time (the evaluation's batch of one), captions in
the video prompt with "Find an everyday video match with caption."; a caption's score for a
video is the cosine of their embeddings.
"""

from __future__ import annotations

import csv
import io
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics
from recall.prompts import VIDEO_INSTRUCTION, Candidate, Query

KS = (1, 5, 10)
CAPTION_BATCH = 4  # the evaluation's caption batch (batching changes no vector)
# The published R@1 (%) text -> video, by set and backbone.
PAPER_R1 = {"msrvtt": {"7B": 47.2, "4B": 34.1}, "msvd": {"7B": 54.6, "4B": 44.0}}
MSVD_FRAMES = 12


@dataclass(frozen=True)
class VideoSet:
    name: str  # msrvtt or msvd
    videos: dict[str, Path]  # video id -> file, in the set's order
    captions: list[tuple[str, str]]  # (video id, caption): the queries
    nframes: int | None  # frames sampled a video (None: 2 a second)


def _find(root: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no {what} under {root} (looked for {', '.join(names)})")


def _video_files(root: Path, ids: Sequence[str], suffix: str) -> dict[str, Path]:
    folder = _find(root, ["MSRVTT_Videos", "YouTubeClips", "videos/all", "videos"], "videos")
    files = {video: folder / f"{video}{suffix}" for video in ids}
    missing = [video for video, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} videos missing in {folder}, e.g. {missing[0]}")
    return files


def read_msrvtt(root: Path) -> VideoSet:
    table = _find(
        root,
        ["MSRVTT_JSFUSION_test.csv", "msrvtt_data/MSRVTT_JSFUSION_test.csv"],
        "MSR-VTT test captions",
    )
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"video_id", "sentence"} <= set(rows[0]):
        raise ValueError(f"{table}: expected the columns video_id and sentence")
    captions = [(row["video_id"], row["sentence"]) for row in rows]
    ids = list(dict.fromkeys(video for video, _ in captions))
    return VideoSet("msrvtt", _video_files(root, ids, ".mp4"), captions, None)


class _PlainData(pickle.Unpickler):
    """Reads pickles of builtin containers and strings only: loading a caption file never
    runs code that the file names."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def read_msvd(root: Path) -> VideoSet:
    listing = _find(root, ["test_list.txt", "msvd_data/test_list.txt"], "MSVD test list")
    pickled = _find(root, ["raw-captions.pkl", "msvd_data/raw-captions.pkl"], "MSVD captions")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    raw = _PlainData(io.BytesIO(pickled.read_bytes())).load()
    captions = []
    for video in ids:
        if video not in raw:
            raise ValueError(f"{pickled}: no captions for test video {video}")
        captions += [(video, " ".join(tokens)) for tokens in raw[video]]
    return VideoSet("msvd", _video_files(root, ids, ".avi"), captions, MSVD_FRAMES)


READERS: dict[str, Callable[[Path], VideoSet]] = {"msrvtt": read_msrvtt, "msvd": read_msvd}


def evaluate(
    embedder: Any,
    dataset: VideoSet,
    *,
    ks: Sequence[int] = KS,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """R@k text -> video (and video -> text) of ``embedder`` on ``dataset``, with the time
    each side took. The embedder's ``video_nframes`` should be ``dataset.nframes``."""
    ids = list(dataset.videos)
    advance = progress(f"videos {dataset.name}", len(ids)) if progress else None
    started = time.perf_counter()
    rows = []
    for video in ids:
        rows.append(embedder.encode_candidates([Candidate(video=dataset.videos[video])])[0])
        if advance:
            advance(1)
    videos = np.stack(rows)
    video_seconds = time.perf_counter() - started

    advance = progress(f"captions {dataset.name}", len(dataset.captions)) if progress else None
    started = time.perf_counter()
    parts = []
    for start in range(0, len(dataset.captions), CAPTION_BATCH):
        batch = dataset.captions[start : start + CAPTION_BATCH]
        queries = [
            Query(text=caption, instruction=VIDEO_INSTRUCTION, protocol="video")
            for _, caption in batch
        ]
        parts.append(embedder.encode_queries(queries))
        if advance:
            advance(len(batch))
    captions = np.concatenate(parts)
    caption_seconds = time.perf_counter() - started

    scores = captions @ videos.T
    t2v = [
        metrics.rank(ids, scores[row]) for row in range(len(dataset.captions))
    ]  # best video first, per caption
    wanted = [video for video, _ in dataset.captions]
    owners: dict[str, set[str]] = {}
    for row, video in enumerate(wanted):
        owners.setdefault(video, set()).add(str(row))
    rows_ids = [str(row) for row in range(len(dataset.captions))]
    v2t = [metrics.rank(rows_ids, scores[:, column]) for column in range(len(ids))]
    return {
        "dataset": dataset.name,
        "videos": len(ids),
        "captions": len(dataset.captions),
        "nframes": dataset.nframes,
        "ks": list(ks),
        "text_to_video": {
            str(k): metrics.mean(
                [metrics.hit_at_k(r, {v}, k) for r, v in zip(t2v, wanted, strict=True)]
            )
            for k in ks
        },
        "video_to_text": {
            str(k): metrics.mean(
                [metrics.hit_at_k(r, owners[v], k) for r, v in zip(v2t, ids, strict=True)]
            )
            for k in ks
        },
        "seconds": {"videos": video_seconds, "captions": caption_seconds},
        "paper_r1": PAPER_R1[dataset.name],
    }


def table(summary: dict[str, Any]) -> str:
    from evaluation.report import format_table

    ks = summary["ks"]
    rows = [
        [direction, *(f"{100 * summary[key][str(k)]:.1f}" for k in ks)]
        for direction, key in (
            ("text -> video", "text_to_video"),
            ("video -> text", "video_to_text"),
        )
    ]
    paper = ", ".join(f"{size} {r1}" for size, r1 in summary["paper_r1"].items())
    seconds = summary["seconds"]
    return (
        f"{summary['dataset']}: {summary['captions']} captions, {summary['videos']} videos\n"
        + format_table(["Direction", *(f"R@{k}" for k in ks)], rows)
        + f"\n\nPaper R@1 text -> video: {paper}."
        + f"\nEmbedding: {summary['videos'] / max(seconds['videos'], 1e-9):.2f} videos/s, "
        + f"{summary['captions'] / max(seconds['captions'], 1e-9):.1f} captions/s."
    )


def chart(summary: dict[str, Any], path: Path) -> None:
    from evaluation.report import bar_chart

    ks = summary["ks"]
    series = {
        direction: [100 * summary[key][str(k)] for k in ks]
        for direction, key in (("text->video", "text_to_video"), ("video->text", "video_to_text"))
    }
    bar_chart(path, [f"R@{k}" for k in ks], series, f"{summary['dataset']}: retrieval", "%")


def write_sample(root: Path, layout: str, videos: int = 6, captions_per_video: int = 2) -> None:
    """A tiny set in ``layout``'s files (generated clips of distinct motion and colour), to
    try the command and to test it."""
    from devkit.clips import make_clip

    colours = {
        "red": (230, 30, 30),
        "green": (30, 200, 60),
        "blue": (40, 80, 255),
        "yellow": (255, 220, 0),
        "white": (250, 250, 250),
        "purple": (150, 40, 190),
    }
    names = list(colours)
    ids = [f"video{7000 + n}" if layout == "msrvtt" else f"clip{n:03d}" for n in range(videos)]
    folder = root / ("MSRVTT_Videos" if layout == "msrvtt" else "YouTubeClips")
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".mp4" if layout == "msrvtt" else ".avi"
    for n, video in enumerate(ids):
        colour = colours[names[n % len(names)]]
        codec = "libx264" if layout == "msrvtt" else "mpeg4"  # MSVD's clips are AVI
        data = make_clip(48, 32, 12 + 2 * n, 4, codec=codec, container=suffix[1:], colour=colour)
        (folder / f"{video}{suffix}").write_bytes(data)
    if layout == "msrvtt":
        data_dir = root / "msrvtt_data"
        data_dir.mkdir(exist_ok=True)
        with open(data_dir / "MSRVTT_JSFUSION_test.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "vid_key", "video_id", "sentence"])
            for n, video in enumerate(ids):
                sentence = f"a {names[n % len(names)]} square moving across the screen"
                writer.writerow([f"ret{n}", f"msr{7000 + n}", video, sentence])
        return
    data_dir = root / "msvd_data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "test_list.txt").write_text("".join(f"{video}\n" for video in ids))
    raw = {
        video: [
            f"a {names[n % len(names)]} square moves {way}".split()
            for way in ["left", "slowly", "fast", "again"][:captions_per_video]
        ]
        for n, video in enumerate(ids)
    }
    (data_dir / "raw-captions.pkl").write_bytes(pickle.dumps(raw))

"""Embedding throughput on the tiny models: batched against one by one, in one run.

    python -m bench.encode [--items 64] [--videos 8] [--models .umarvel/tiny-models]
                           [--arch qwen3_vl]

Prints items/s per modality and batch size, and the ratio of batched (64 mixed items)
to one-by-one encoding. Target: at least 3x.

Then videos (``--videos`` generated clips of 8 s, and one 90 s clip cut into segments):
videos/s of each stage apart (the check's full decode, U-MARVEL's frame sampling, and the
whole embedding, which samples again), and segment-seconds/s (seconds of video embedded a
second), beside images/s of the same model.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from bench.common import MODALITIES, rate, sample_items
from devkit.clips import make_clip
from devkit.tiny_models import build_all
from media.video import Video, open_video, sample_video, segment_bounds
from recall import Candidate, Embedder, EmbedderConfig

CLIP = {"width": 160, "height": 120, "rate": 8}  # 8 s clips: 64 frames each
LONG_SECONDS = 90
WINDOW, STRIDE = 30.0, 15.0  # the segment settings' defaults


def _one_by_one(embedder: Embedder, items: list[Candidate]) -> None:
    for item in items:
        embedder.encode_candidates([item])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--videos", type=int, default=8, help="0: no video figures")
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    parser.add_argument("--arch", default="qwen3_vl", choices=["qwen2_vl", "qwen3_vl"])
    args = parser.parse_args()
    path = build_all(args.models)[args.arch]
    print(f"model: tiny {args.arch} (random weights), CPU, float32, {args.items} items")
    print(f"{'modality':<11} {'batch':>5} {'items/s':>9}")
    for modality in MODALITIES:
        items = [Candidate(text, image) for text, image in sample_items(args.items, modality)]
        rates = {}
        for batch in (1, 8, 32, 64):
            embedder = Embedder.from_pretrained(
                str(path), device="cpu", config=EmbedderConfig(batch_size=batch)
            )
            if batch == 1:
                run = partial(_one_by_one, embedder, items)
            else:
                run = partial(embedder.encode_candidates, items)
            rates[batch] = rate(run, len(items))
            print(f"{modality:<11} {batch:>5} {rates[batch]:>9.1f}")
        if modality == "mixed":
            ratio = rates[64] / rates[1]
            verdict = "meets" if ratio >= 3 else "misses"
            print(f"\nbatched (64, mixed) / one by one: {ratio:.2f}x ({verdict} the 3x target)")
    if args.videos:
        _videos(Embedder.from_pretrained(str(path), device="cpu"), args.videos, args.items)


def _check(data: bytes) -> Video:
    return open_video(data, max_bytes=1 << 30, max_pixels=1 << 24, max_frames=100_000)


def _videos(embedder: Embedder, count: int, images: int) -> None:
    """Videos/s of each stage, segment-seconds/s, and images/s of the same model."""
    size = (CLIP["width"], CLIP["height"])
    clips = [make_clip(*size, 8 * CLIP["rate"], CLIP["rate"]) for _ in range(count)]
    checked = [_check(data) for data in clips]
    image_items = [Candidate(t, i) for t, i in sample_items(images, "image")]
    stages = {
        "check (full decode)": lambda: [_check(data) for data in clips],
        "sample (decode, pick, resize)": lambda: [sample_video(video) for video in checked],
        "embed (all of it)": lambda: embedder.encode_candidates(
            [Candidate(video=video) for video in checked]
        ),
    }
    print(f"\nvideos: {count} clips of 8 s, {size[0]}x{size[1]} at {CLIP['rate']} fps")
    print(f"{'stage':<30} {'videos/s':>9}")
    for stage, run in stages.items():
        print(f"{stage:<30} {rate(run, count):>9.2f}")
    long = _check(make_clip(*size, LONG_SECONDS * CLIP["rate"], CLIP["rate"]))
    bounds = segment_bounds(long.info.frames, long.info.fps, WINDOW, STRIDE)
    segments = [Candidate(video=long.segment(start, stop)) for start, stop in bounds]
    embedded = sum(stop - start for start, stop in bounds) / long.info.fps
    seconds = 1 / rate(lambda: embedder.encode_candidates(segments), 1, repeats=1)
    print(
        f"\n{LONG_SECONDS} s clip as {len(bounds)} segments of {WINDOW:.0f} s every "
        f"{STRIDE:.0f} s: {embedded / seconds:.1f} segment-seconds/s, the whole video in "
        f"{seconds:.2f} s ({LONG_SECONDS / seconds:.0f}x real time)"
    )
    image_rate = rate(lambda: embedder.encode_candidates(image_items), len(image_items))
    print(f"images (same model, one batch): {image_rate:.1f} images/s")


if __name__ == "__main__":
    main()

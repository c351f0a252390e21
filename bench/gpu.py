"""Throughput of the real-size architectures with random weights, in bf16 on a GPU.

    python -m bench.gpu [--arch qwen3_vl|qwen2_vl] [--tiny --device cpu]

Builds U-MARVEL-Qwen3VL-4B (or Qwen2VL-7B) from the published config values with random
weights, wraps it in the project's Embedder and Reranker, and measures texts/s, images/s
and videos/s (with segment-seconds/s) of embedding and pairs/s of reranking, with the
achieved fraction of the GPU's peak bf16 FLOP/s (forward FLOPs ~= 2 x parameters x
tokens). ``--tiny`` runs the same code on the tiny sizes, to check the script on a machine
without a GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from bench.common import sample_items
from devkit.clips import make_clip
from devkit.samples import shape_image
from devkit.tiny_models import build_config, build_processor, build_tokenizer
from media.video import open_video
from mllm import families
from mllm.batching import image_tokens
from mllm.loading import Loaded
from recall import Candidate, Embedder, EmbedderConfig, prompts
from rerank import RerankCandidate, Reranker, RerankerConfig, RerankQuery
from rerank.reranker import shared_prefix_length

VIDEO_SECONDS = 10  # the generated clips' length (320x240, 24 fps): 20 frames sampled

# Published config values (Qwen/Qwen3-VL-4B-Instruct, Qwen/Qwen2-VL-7B-Instruct).
REAL_SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "qwen3_vl": (
        {
            "vocab_size": 151936,
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2560,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
    ),
    "qwen2_vl": (
        {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
        },
        {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "hidden_size": 3584},
    ),
}
# Dense bf16 tensor-core peaks, FLOP/s.
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def build(arch: str, tiny: bool, device: str) -> Loaded:
    import torch

    tokenizer = build_tokenizer(arch)
    processor = build_processor(arch, tokenizer)
    text, vision = ({}, {}) if tiny else REAL_SIZES[arch]
    config = build_config(arch, tokenizer, text, vision)
    # Qwen3-VL-4B ties its output head to the input embeddings (a top-level setting).
    config.tie_word_embeddings = bool(text.get("tie_word_embeddings", False))
    record = families.family(arch)
    model_class = families.model_class(record)
    torch_device = torch.device(device)
    dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    config._attn_implementation = "sdpa"
    with torch.device(torch_device):
        model = model_class._from_config(config, dtype=dtype).eval()
    return Loaded(model, processor, record, torch_device, dtype)


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def timed(run: Callable[[], Any], sync: Callable[[], None], repeats: int = 3) -> float:
    run()
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="qwen3_vl", choices=sorted(REAL_SIZES))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--videos", type=int, default=8, help="10 s clips (0: none)")
    args = parser.parse_args()
    loaded = build(args.arch, args.tiny, args.device)
    on_gpu = loaded.device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    backbone = loaded.model.model
    lm_params = (
        _params(backbone.language_model) - backbone.language_model.embed_tokens.weight.numel()
    )
    vision_params = _params(backbone.visual)
    print(
        f"{args.arch} {'tiny' if args.tiny else 'real-size'}, random weights, "
        f"{loaded.dtype}, {name}"
    )
    print(f"language model {lm_params / 1e9:.2f} B parameters, vision {vision_params / 1e9:.2f} B")

    embedder = Embedder(loaded, EmbedderConfig(batch_size=args.items, batch_tokens=1 << 20))
    reranker = Reranker(
        loaded,
        RerankerConfig(batch_size=args.items, batch_tokens=1 << 20, repetition_penalty=False),
    )
    image_processor = loaded.processor.image_processor
    merge = image_processor.merge_size**2
    workloads = {
        "embed texts": [Candidate(t, None) for t, _ in sample_items(args.items, "text")],
        "embed images": [Candidate(None, img) for _, img in sample_items(args.items, "image")],
    }
    if args.videos:
        clip = make_clip(320, 240, VIDEO_SECONDS * 24, 24)
        video = open_video(clip, max_bytes=1 << 30, max_pixels=1 << 24, max_frames=100_000)
        workloads["embed videos"] = [Candidate(video=video) for _ in range(args.videos)]
    for label, items in workloads.items():
        prepared = [embedder._prepare(prompts.candidate_text(c), c.image, c.video) for c in items]
        tokens = sum(p.cost for p in prepared)
        patches = merge * sum(_image_tokens(image_processor, [p.image]) for p in prepared)
        # A video's expansion is its merged patches: tokens past the prompt's own.
        patches += merge * sum(p.cost - len(p.ids) for p in prepared if p.video is not None)
        seconds = timed(lambda items=items: embedder.encode_candidates(items), sync)
        flops = 2 * lm_params * tokens + 2 * vision_params * patches
        _report(label, len(items), seconds, tokens, flops, peak)
        if label == "embed videos":
            print(f"{'':<20} {len(items) * VIDEO_SECONDS / seconds:>9.1f} segment-seconds/s")
    candidates = [RerankCandidate(t, img) for t, img in sample_items(args.items, "mixed")]
    queries = {
        "text": RerankQuery(text="a red circle", instruction="Find an image."),
        "image": RerankQuery(
            image=shape_image("red", "circle", 448), instruction="Find a caption."
        ),
    }
    for kind, query in queries.items():
        scored = [reranker._prepare(query, reranker._image(query.image), c) for c in candidates]
        tokens = sum(p.cost for p in scored)
        patches = merge * sum(_image_tokens(image_processor, p.images) for p in scored)
        # What the shared-prefix path computes: the prefix (and query image) once.
        split = shared_prefix_length(scored, reranker.tokens.image_id)
        head = scored[0].ids[:split]
        head_images = scored[0].images[: head.count(reranker.tokens.image_id)]
        head_tokens = len(head) + _image_tokens(image_processor, head_images) - len(head_images)
        head_patches = merge * _image_tokens(image_processor, head_images)
        work = {
            False: (tokens, patches),
            True: (
                tokens - (len(scored) - 1) * head_tokens,
                patches - (len(scored) - 1) * head_patches,
            ),
        }
        for shared, (computed, computed_patches) in work.items():
            reranker.config = replace(reranker.config, shared_prefix=shared)
            seconds = timed(partial(reranker.score, query, candidates), sync)
            _report(
                f"rerank {kind} {'shared' if shared else 'full'}",
                len(candidates),
                seconds,
                computed,
                2 * lm_params * computed + 2 * vision_params * computed_patches,
                peak,
            )


def _image_tokens(image_processor: Any, images: list[Any]) -> int:
    return sum(
        image_tokens(image_processor, im.height, im.width) for im in images if im is not None
    )


def _report(
    label: str, n: int, seconds: float, tokens: int, flops: float, peak: float | None
) -> None:
    """Forward FLOPs ~= 2 x parameters x tokens (attention scores not counted)."""
    achieved = flops / seconds
    share = f"{achieved / peak:.1%} of peak" if peak else "peak unknown"
    print(
        f"{label:<20} {n / seconds:>9.1f} items/s  {tokens / seconds:>10.0f} tokens/s  "
        f"{achieved / 1e12:>7.2f} TFLOP/s ({share})"
    )


if __name__ == "__main__":
    main()

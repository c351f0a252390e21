"""Deterministic tiny random checkpoints of the Qwen2-VL and Qwen3-VL architectures.

Weights cannot be downloaded on build machines, so tests and the demo use these: the same
model classes, a byte-level BPE tokenizer with the Qwen-VL special tokens, the real chat
templates and the standard processors, all written with ``save_pretrained`` so that they
load through exactly the ``from_pretrained`` path of the real U-MARVEL checkpoints.
The weights are random: rankings made with them are meaningless.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

Arch = Literal["qwen2_vl", "qwen3_vl"]
ARCHS: tuple[Arch, ...] = ("qwen2_vl", "qwen3_vl")

# The order of the Qwen2 tokenizer family's special tokens (ids 151643... in the real ones).
_QWEN2_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen3 adds these (non-special in the real tokenizer; kept so ids line up the same way).
_QWEN3_EXTRA = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
# A few merges so that common words are single tokens, as in a real BPE.
_MERGE_WORDS = ["Yes", "No", "the", "and", "image", "sentence", "Summarize", "above", "word"]
# Model vocabulary: larger than the tokenizer, as in the real checkpoints.
_VOCAB_SIZE = 384


def chat_template(arch: Arch) -> str:
    return (resources.files("core") / "chat_templates" / f"{arch}.jinja").read_text()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_tokenizer(arch: Arch) -> Any:
    from transformers import AddedToken, Qwen2Tokenizer

    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for byte in range(256):
        vocab[byte_chars[byte]] = len(vocab)
    # (left, right) pairs in rank order; typed loosely, the stubs only list the file forms.
    merges: list[Any] = []
    for word in _MERGE_WORDS:
        for prefix in ("Ġ", ""):  # "Ġ" is the byte-level form of a leading space
            pieces = [prefix, *word] if prefix else list(word)
            current = pieces[0]
            for piece in pieces[1:]:
                merged = current + piece
                if merged not in vocab:
                    merges.append((current, piece))
                    vocab[merged] = len(vocab)
                current = merged
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,  # type: ignore[arg-type]  # the real Qwen tokenizers have none
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    specials = [AddedToken(t, special=True, normalized=False) for t in _QWEN2_VL_SPECIALS]
    tokenizer.add_tokens(specials, special_tokens=True)
    if arch == "qwen3_vl":
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _QWEN3_EXTRA])
    tokenizer.chat_template = chat_template(arch)
    return tokenizer


def build_processor(arch: Arch, tokenizer: Any) -> Any:
    if arch == "qwen2_vl":
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(
            patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=3136, max_pixels=12845056
        )
        return Qwen2VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=chat_template(arch),
        )
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=chat_template(arch),
    )


def build_config(
    arch: Arch,
    tokenizer: Any,
    text_sizes: dict[str, Any] | None = None,
    vision_sizes: dict[str, Any] | None = None,
) -> Any:
    """A config of ``arch`` with the tokenizer's ids; tiny sizes unless others are given."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _QWEN2_VL_SPECIALS}
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    text: dict[str, Any] = {
        "vocab_size": _VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": [2, 3, 3],  # sums to head_dim / 2 = 64 / 4 / 2
        }
        vision: dict[str, Any] = {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger's output: the language model's width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        text.update(text_sizes or {})
        vision.update(vision_sizes or {})
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    from transformers import Qwen3VLConfig

    text["head_dim"] = 16
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    }
    text.update(text_sizes or {})
    vision.update(vision_sizes or {})
    return Qwen3VLConfig(text_config=text, vision_config=vision, **common)


def build_tiny_model(arch: Arch, out_dir: Path | str, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` checkpoint with tokenizer and processor to ``out_dir``."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration, Qwen3VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(out_dir)
    tokenizer = build_tokenizer(arch)
    processor = build_processor(arch, tokenizer)
    config = build_config(arch, tokenizer)
    model_class = (
        Qwen2VLForConditionalGeneration if arch == "qwen2_vl" else Qwen3VLForConditionalGeneration
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if arch == "qwen2_vl":  # the real Qwen2-VL-7B-Instruct generation config has it
        model.generation_config.repetition_penalty = 1.05
    # Random init gives tiny logits; widen them so scores are not all ~0.5.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for path in out.iterdir():  # save_pretrained writes 0600 files; others must read them
        path.chmod(0o644)
    return out


def build_all(out_dir: Path | str, seed: int = 0) -> dict[str, Path]:
    """Both architectures under ``out_dir/<arch>``; existing complete folders are kept."""
    root = Path(out_dir)
    built: dict[str, Path] = {}
    for arch in ARCHS:
        target = root / arch
        if not (target / "config.json").exists() or not (target / "model.safetensors").exists():
            build_tiny_model(arch, target, seed=seed)
        built[arch] = target
    return built

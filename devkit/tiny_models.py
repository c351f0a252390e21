"""Deterministic tiny random checkpoints of every family in ``mllm.families``.

Weights cannot be downloaded on build machines, so tests and the demo use these: the same
model classes, a byte-level BPE tokenizer with the Qwen-VL special tokens, the real chat
templates and the standard processors, all written with ``save_pretrained`` so that they
load through exactly the ``from_pretrained`` path of the real U-MARVEL checkpoints.
The weights are random: rankings made with them are meaningless.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from mllm import families
from mllm.families import Tiny

# The families the demo, the benchmarks and the tests build by default.
ARCHS: tuple[str, ...] = (families.QWEN2_VL.name, families.QWEN3_VL.name)

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
# A few merges so that common words are single tokens, as in a real BPE (the rerankers' Yes/No
# and Qwen3-VL-Reranker's yes/no among them).
_MERGE_WORDS = [
    *("Yes", "No", "the", "and", "image", "sentence", "Summarize", "above", "word"),
    *("yes", "no"),
]
# Model vocabulary: larger than the tokenizer, as in the real checkpoints.
_VOCAB_SIZE = 384


def _tiny(arch: str) -> Tiny:
    recipe = families.family(arch).tiny
    if recipe is None:
        raise ValueError(f"family {arch!r} has no tiny recipe")
    return recipe


def chat_template(arch: str) -> str:
    """The family's chat template: a file of devkit/chat_templates, or its own path."""
    template = _tiny(arch).chat_template
    if isinstance(template, Path):
        return template.read_text()
    return (resources.files("devkit") / "chat_templates" / template).read_text()


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


def build_tokenizer(arch: str) -> Any:
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
    if _tiny(arch).qwen3_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _QWEN3_EXTRA])
    tokenizer.chat_template = chat_template(arch)
    return tokenizer


def build_processor(arch: str, tokenizer: Any) -> Any:
    import transformers

    tiny = _tiny(arch)
    return getattr(transformers, tiny.processor_class)(
        image_processor=transformers.Qwen2VLImageProcessor(**tiny.image_processor),
        tokenizer=tokenizer,
        video_processor=getattr(transformers, tiny.video_processor_class)(**tiny.video_processor),
        chat_template=chat_template(arch),
    )


def build_config(
    arch: str,
    tokenizer: Any,
    text_sizes: dict[str, Any] | None = None,
    vision_sizes: dict[str, Any] | None = None,
) -> Any:
    """A config of ``arch`` with the tokenizer's ids; tiny sizes unless others are given."""
    import transformers

    tiny = _tiny(arch)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in _QWEN2_VL_SPECIALS}
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
        **tiny.text,
        **(text_sizes or {}),
    }
    return getattr(transformers, tiny.config_class)(
        text_config=text,
        vision_config={**tiny.vision, **(vision_sizes or {})},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_model(arch: str, out_dir: Path | str, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` checkpoint with tokenizer and processor to ``out_dir``."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(out_dir)
    tokenizer = build_tokenizer(arch)
    processor = build_processor(arch, tokenizer)
    config = build_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = families.model_class(families.family(arch))(config).eval()
    for name, value in _tiny(arch).generation.items():
        setattr(model.generation_config, name, value)
    # Random init gives tiny logits; widen them so scores are not all ~0.5.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for path in out.iterdir():  # save_pretrained writes 0600 files; others must read them
        path.chmod(0o644)
    return out


def build_all(
    out_dir: Path | str, seed: int = 0, archs: tuple[str, ...] = ARCHS
) -> dict[str, Path]:
    """Each of ``archs`` under ``out_dir/<arch>``; existing complete folders are kept."""
    root = Path(out_dir)
    built: dict[str, Path] = {}
    for arch in archs:
        target = root / arch
        if not (target / "config.json").exists() or not (target / "model.safetensors").exists():
            build_tiny_model(arch, target, seed=seed)
        built[arch] = target
    return built

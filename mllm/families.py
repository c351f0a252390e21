"""Model families: one record each, looked up by a checkpoint's ``config.model_type``.

Everything that differs between Qwen-VL generations lives in its record, so the loader,
the embedder, the reranker and the tiny-checkpoint builder hold no ``if family`` branch,
and a new family is one ``register(Family(...))`` plus its chat template::

    register(Family(name="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration",
                    positions=Positions.SEQUENTIAL, tiny=Tiny(...)))

A record names transformers classes as strings: this module imports no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Positions(StrEnum):
    """The embedder's 1-D position ids for its bidirectional forward (SPEC section 5)."""

    SEQUENTIAL = "sequential"  # 0..L-1 on every row, pads included (U-MARVEL on Qwen2-VL)
    MASK_CUMSUM = "mask_cumsum"  # counting unmasked tokens, pads at 1 (on Qwen3-VL)


class TokenRows(StrEnum):
    """How the embedding rows of U-MARVEL's added tokens start when a tokenizer lacks them."""

    AS_LOADED = "as_loaded"  # the checkpoint's spare rows, untouched
    # The original resized one token at a time with mean initialisation: rows N+1 and N+2
    # are the float32 mean of rows 0..N (N: the tokenizer's length before adding them).
    MEAN = "mean"


class VideoPrompt(StrEnum):
    """What stands for a video in the prompt, after the chat template's
    ``<|vision_start|><|video_pad|><|vision_end|>`` (UMARVEL-VIDEO-SPEC section 4)."""

    # ``<|video_pad|>`` once per merged patch of every frame, between the template's markers.
    PADS = "pads"
    # The template's three tokens replaced, per temporal group of frames, by
    # ``<{t:.1f} seconds><|vision_start|>``, the group's pads and ``<|vision_end|>``.
    TIMESTAMPED = "timestamped"


class Pooling(StrEnum):
    """Whether the embedder's mean pools an instruction span (markers included)."""

    EXCLUDED = "excluded"
    POOLED = "pooled"


@dataclass(frozen=True)
class Tiny:
    """How ``devkit.tiny_models`` builds a tiny random checkpoint of the family.

    Sizes are merged over the common tiny text config (64 wide, 2 layers); the processor's
    image settings are the real checkpoints' own.
    """

    config_class: str
    processor_class: str
    video_processor_class: str
    image_processor: dict[str, Any]  # Qwen2VLImageProcessor's settings
    text: dict[str, Any]
    vision: dict[str, Any]
    # A file name in devkit/chat_templates, or a path to a template of one's own.
    chat_template: str | Path
    # Qwen3's tokenizer adds tool and thinking tokens after the vision ones.
    qwen3_tokens: bool = False
    # Written into the generation config, as the real checkpoint's is.
    generation: dict[str, Any] = field(default_factory=dict)
    # The video processor's settings, as the real checkpoint's (its class defaults otherwise).
    video_processor: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One family of checkpoints (``config.model_type`` is ``name``)."""

    name: str
    model_class: str  # in ``transformers``, loaded with from_pretrained
    positions: Positions
    token_rows: TokenRows = TokenRows.AS_LOADED
    video_prompt: VideoPrompt = VideoPrompt.PADS
    # The instruction span of a text query in U-MARVEL's video protocol: the published
    # multi-GPU evaluation excluded it on Qwen2-VL (the model's own mask), pooled it on
    # Qwen3-VL (its collator gave no mask). UMARVEL-VIDEO-SPEC section 5.
    video_query_instruction: Pooling = Pooling.EXCLUDED
    tiny: Tiny | None = None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) ``family`` in the registry."""
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    _FAMILIES.pop(name, None)


def family(model_type: str) -> Family:
    """The record of ``model_type``; a ValueError names the supported ones."""
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise ValueError(f"model_type {model_type!r} is not one of {sorted(_FAMILIES)}") from None


def names() -> tuple[str, ...]:
    """The registered families, in registration order."""
    return tuple(_FAMILIES)


def model_class(record: Family) -> Any:
    import transformers

    return getattr(transformers, record.model_class)


# The vision settings of the Qwen2-VL image processor, as the 7B checkpoint ships them.
_QWEN2_IMAGE = {
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "min_pixels": 3136,
    "max_pixels": 12845056,
}

QWEN2_VL = register(
    Family(
        name="qwen2_vl",
        model_class="Qwen2VLForConditionalGeneration",
        positions=Positions.SEQUENTIAL,
        tiny=Tiny(
            config_class="Qwen2VLConfig",
            processor_class="Qwen2VLProcessor",
            video_processor_class="Qwen2VLVideoProcessor",
            image_processor=_QWEN2_IMAGE,
            text={
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1000000.0,
                    "mrope_section": [2, 3, 3],  # sums to head_dim / 2 = 64 / 4 / 2
                }
            },
            vision={
                "depth": 2,
                "embed_dim": 32,
                "hidden_size": 64,  # the merger's output: the language model's width
                "num_heads": 2,
                "mlp_ratio": 2,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
            },
            chat_template="qwen2_vl.jinja",
            # The real Qwen2-VL-7B-Instruct generation config has it.
            generation={"repetition_penalty": 1.05},
            # The checkpoint ships no video settings: its video processor reads the image ones.
            video_processor=_QWEN2_IMAGE,
        ),
    )
)

# The image and video processors' shared settings, as Qwen3-VL-4B-Instruct ships them.
_QWEN3_VISION = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

QWEN3_VL = register(
    Family(
        name="qwen3_vl",
        model_class="Qwen3VLForConditionalGeneration",
        positions=Positions.MASK_CUMSUM,
        token_rows=TokenRows.MEAN,
        video_prompt=VideoPrompt.TIMESTAMPED,
        video_query_instruction=Pooling.POOLED,
        tiny=Tiny(
            config_class="Qwen3VLConfig",
            processor_class="Qwen3VLProcessor",
            video_processor_class="Qwen3VLVideoProcessor",
            image_processor={
                **_QWEN3_VISION,
                "size": {"shortest_edge": 65536, "longest_edge": 16777216},
            },
            text={
                "head_dim": 16,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 5000000.0,
                    "mrope_section": [2, 3, 3],
                    "mrope_interleaved": True,
                },
            },
            vision={
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
            },
            chat_template="qwen3_vl.jinja",
            qwen3_tokens=True,
            video_processor={
                **_QWEN3_VISION,
                "size": {"shortest_edge": 4096, "longest_edge": 25165824},
            },
        ),
    )
)

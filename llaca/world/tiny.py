"""The tiny LLaVA's architecture: a real LlavaForConditionalGeneration (CLIP vision + Llama text).

Same classes, processor and chat format as llava-hf/llava-1.5-7b-hf, only small: the model
is built from explicit configs, so it can be created and trained with no network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from .processor import BOS_ID, EOS_ID, IMAGE_ID, PAD_ID


@dataclass
class TinyArch:
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    vocab_size: int = 640
    max_positions: int = 512

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def build_config(arch: TinyArch) -> LlavaConfig:
    vision = CLIPVisionConfig(
        image_size=arch.image_size, patch_size=arch.patch_size, hidden_size=arch.vision_hidden,
        intermediate_size=4 * arch.vision_hidden, num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads, projection_dim=arch.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.text_hidden, intermediate_size=2 * arch.text_hidden,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads, max_position_embeddings=arch.max_positions,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_ID, image_seq_length=arch.image_tokens,
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )


def build_model(arch: TinyArch, seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(arch))
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    gc.do_sample, gc.max_new_tokens = False, 64
    return model

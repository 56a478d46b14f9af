"""A tiny random LLaVA with llava-1.5-7b-hf's settings, saved like a hub model (for tests).

336 px images, patch 14, `vision_feature_layer=-2`, `vision_feature_select_strategy="default"`,
`<image>` at id 32000 and llava-hf's own chat template; random weights, so it rarely emits
EOS and an answer runs until `max_new_tokens` (a long, still-streaming answer on demand).
The processor (word-level tokenizer, CLIP preprocessing, the template) is
`llaca.model.random_llava.llava15_processor`, the one the real-geometry benchmarks use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from llaca.model.random_llava import LLAVA_HF_TEMPLATE, llava15_processor  # noqa: F401  (the template, for tests)


def make_llava15(out: Path) -> Path:
    """Save a tiny random LLaVA with llava-1.5-7b-hf's settings (and its processor) to ``out``."""
    processor = llava15_processor()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=3, num_attention_heads=2, projection_dim=32),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                bos_token_id=1, eos_token_id=2, pad_token_id=32001),
        image_token_index=32000, image_seq_length=576, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out

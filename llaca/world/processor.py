"""The tiny model's offline tokenizer and LlavaProcessor (LLaVA-1.5 chat format, no torchvision).

The tokenizer is a byte-level BPE trained with `tokenizers` on the world's own text, so it
can encode any user text (bytes fall back to single-byte tokens) while every colour, shape
and digit of the world is one token. The image processor is the PIL backend of
CLIPImageProcessor, built from explicit arguments.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

from .families import CONTINUAL_SEQUENCE, FAMILIES, make_item, sample_rng
from .palette import COLOR_NAMES, LETTERS, QUADRANTS, SHAPES

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = range(4)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# LLaVA-1.5's conversation format, exactly: "USER: <image>\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT:".
# Content may be a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- set texts = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- if message['role'] == 'system' -%}{{ texts + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- for part in parts if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}{{ texts + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}{% generation %}{{ texts + '</s>' }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def corpus(seed: int = 0, per_family: int = 300) -> list[str]:
    """Lines of the world's text: every question form, answer and caption, plus the chat frame."""
    lines = ["USER: ASSISTANT: USER: ASSISTANT:", " ".join(COLOR_NAMES), " ".join(SHAPES), " ".join(LETTERS)]
    lines += [" ".join(QUADRANTS), "yes no unanswerable", "0 1 2 3 4 5 6 7 8 9 0.00 0.25 0.50 0.75 1.00"]
    for family in list(FAMILIES) + list(CONTINUAL_SEQUENCE):
        for i in range(per_family):
            item = make_item(family, sample_rng(seed, i, f"corpus-{family}"), 64)
            for q, a in item.turns:
                lines.append(f"USER: {q} ASSISTANT: {a}")
    random.Random(seed).shuffle(lines)
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE and wrap it for transformers (left padding for batched generation)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left", model_max_length=512,
    )


def build_image_processor(image_size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
        crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )


def build_processor(image_size: int, patch_size: int, vocab_size: int = 1024, seed: int = 0) -> LlavaProcessor:
    return LlavaProcessor(
        image_processor=build_image_processor(image_size), tokenizer=build_tokenizer(vocab_size, seed),
        patch_size=patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token="<image>",
    )

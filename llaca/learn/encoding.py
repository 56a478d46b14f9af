"""Turning (image, turns) samples into model inputs: chat rendering, answer-only labels, the fast loss.

Used by every training path (the tiny model's build and the LoRA tuner) so what is trained is
exactly what is served: the text is rendered by the processor's chat template and tokenised
by the processor itself (which expands `<image>`); labels cover only the answer tokens (and
the `</s>` that ends them), prompt and image tokens are -100. The loss computes logits only
at answer positions, which is 1.6-1.8x faster than the full LM head on every position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llaca.learn.dataset import VQASample
from llaca.model.chat import messages_for

IGNORE = -100


def render_with_answer_spans(processor, turns: Sequence[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The full conversation text and the character spans of each assistant answer in it."""
    spans = []
    for k in range(len(turns)):
        prefix = processor.apply_chat_template(messages_for(list(turns[:k]) + [(turns[k][0], None)]), add_generation_prompt=True)
        upto = processor.apply_chat_template(messages_for(turns[: k + 1]))
        spans.append((len(prefix), len(upto)))
    return processor.apply_chat_template(messages_for(turns)), spans


def _labels_for(tokenizer, text: str, spans: list[tuple[int, int]], expanded_ids: list[int], image_id: int) -> list[int]:
    """Answer-token labels aligned to the processor's ids (where each `<image>` became N tokens)."""
    enc = tokenizer(text, return_offsets_mapping=True)
    raw_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    raw_labels = [
        tid if any(s <= start < e for s, e in spans) and (start, end) != (0, 0) else IGNORE
        for tid, (start, end) in zip(raw_ids, offsets)
    ]
    n_image_raw = raw_ids.count(image_id)
    n_image_exp = expanded_ids.count(image_id)
    per_image = n_image_exp // n_image_raw if n_image_raw else 0
    labels: list[int] = []
    for tid, lab in zip(raw_ids, raw_labels):
        labels.extend([IGNORE] * per_image if tid == image_id else [lab])
    if len(labels) != len(expanded_ids):
        raise RuntimeError("tokenisation with and without image expansion disagree; check the processor settings")
    return labels


def encode_supervised(processor, samples: Sequence[VQASample]) -> dict[str, torch.Tensor]:
    """A right-padded training batch: input_ids, attention_mask, pixel_values, labels."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(processor.image_token)
    texts, all_spans = zip(*(render_with_answer_spans(processor, s.turns) for s in samples))
    out = processor(images=[s.image for s in samples], text=list(texts), padding=False)
    ids = out["input_ids"]
    labels = [_labels_for(tok, t, sp, i, image_id) for t, sp, i in zip(texts, all_spans, ids)]
    width = max(len(i) for i in ids)
    pad = tok.pad_token_id
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    label_t = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, (i, lab) in enumerate(zip(ids, labels)):
        input_ids[r, : len(i)] = torch.tensor(i)
        label_t[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(i)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": torch.as_tensor(np.stack(out["pixel_values"])),
        "labels": label_t,
    }


def answer_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many answer tokens `answer_loss` averages over in `batch` (a 0-dim tensor, on its device)."""
    return (batch["labels"][:, 1:] != IGNORE).sum()


def answer_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over answer tokens, computing logits only where labels are set.

    `reduction` is "mean" (over the batch's `answer_tokens`) or "sum" (for a caller that divides
    by a token count of its own, e.g. the whole global batch of a multi-process run).
    `model` is a LlavaForConditionalGeneration (possibly with LoRA layers injected by peft).
    """
    llava = getattr(model, "get_base_model", lambda: model)()
    hidden = llava.model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = llava.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction=reduction)

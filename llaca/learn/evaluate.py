"""Answer a set of VQA samples with the model and score them.

Scoring is exact match after lower-casing and stripping punctuation and surrounding
whitespace; a reference that is a bounding box (`[x1, y1, x2, y2]`, or the base family's
`left x1, top y1, right x2, bottom y2`) is scored by IoU > 0.5. Captions can also be scored
object by object (`caption_object_score`): the share of objects named right, with their place.
Generation is greedy and batched (left padding), through the same processor and chat
template as serving.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from llaca.learn.dataset import VQASample
from llaca.model.chat import messages_for

_PUNCT = str.maketrans("", "", string.punctuation)
_NUM = r"-?\d+(?:\.\d+)?"
_BOX = re.compile(rf"^\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*$")
_EDGES = re.compile(rf"^\s*left ({_NUM}), top ({_NUM}), right ({_NUM}), bottom ({_NUM})\s*$")
_CAPTION_OBJECT = re.compile(r"(?:an? (\w+) (\w+)|the letter (\w)) at the (top|bottom) (left|right)")


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    m = _BOX.match(text)
    if m:
        return tuple(float(v) for v in m.groups())  # type: ignore[return-value]
    nums = re.findall(_NUM, text)
    return tuple(float(v) for v in nums[:4]) if len(nums) >= 4 else None  # type: ignore[return-value]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def is_box(reference: str) -> bool:
    return bool(_BOX.match(reference) or _EDGES.match(reference))


def caption_objects(text: str) -> Counter:
    """The objects a caption names, with their quadrant: {('red circle', 'top left'): 1, ('letter K', ...): 1}."""
    found = Counter()
    for color, shape, letter, v, h in _CAPTION_OBJECT.findall(text.lower()):
        found[(f"letter {letter}" if letter else f"{color} {shape}", f"{v} {h}")] += 1
    return found


def caption_object_score(prediction: str, reference: str) -> float:
    """Objects named right (name and quadrant) over the larger of the two object counts, so that
    both a missing and an invented object cost; 1.0 for a perfect caption."""
    pred, ref = caption_objects(prediction), caption_objects(reference)
    n = max(sum(pred.values()), sum(ref.values()))
    return sum((pred & ref).values()) / n if n else 1.0


def is_correct(prediction: str, reference: str) -> bool:
    """Exact match after normalisation; boxes by IoU > 0.5."""
    if is_box(reference):
        pred_box = parse_box(prediction)
        return pred_box is not None and iou(pred_box, parse_box(reference)) > 0.5  # type: ignore[arg-type]
    return normalize(prediction) == normalize(reference)


@dataclass
class EvalResult:
    accuracy: float  # percent
    n: int
    predictions: list[str]
    correct: list[bool]


@torch.no_grad()
def generate_answers(
    model, processor, samples: Sequence[VQASample], batch_size: int = 32, max_new_tokens: int = 72
) -> list[str]:
    """Greedy answers to each sample's first question (single-turn), batched with left padding."""
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [processor.apply_chat_template(messages_for([(s.question, None)]), add_generation_prompt=True) for s in chunk]
        inputs = processor(images=[s.image for s in chunk], text=prompts, padding=True, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        answers += [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return answers


def evaluate(
    model, processor, samples: Sequence[VQASample], batch_size: int = 32,
    scorer: Callable[[str, str], bool] = is_correct,
) -> EvalResult:
    preds = generate_answers(model, processor, samples, batch_size)
    correct = [scorer(p, s.answer) for p, s in zip(preds, samples)]
    acc = 100.0 * sum(correct) / max(1, len(correct))
    return EvalResult(acc, len(correct), preds, correct)


def adapter_scores(lm, adapter: Path | str | None, sets: Sequence[Sequence[VQASample]], digits: int = 2,
                   shared=None) -> list[float]:
    """Accuracy (%) of `lm` (a `LoadedModel`) on each sample set with the LoRA adapter at `adapter`
    applied (None: the model as it is), rounded to `digits`. The one way to score an adapter.
    With `shared` (the app's `SharedModel`) the adapter is loaded into that model beside the
    served ones and answers this thread's rows only."""
    if shared is not None:
        from llaca.model.shared import adapter_key

        with shared.answering(adapter_key(adapter) if adapter else None, adapter) as model:
            return [round(evaluate(model, lm.processor, s).accuracy, digits) for s in sets]
    with adapter_applied(lm.model, adapter) as model:
        return [round(evaluate(model, lm.processor, s).accuracy, digits) for s in sets]


@contextmanager
def adapter_applied(model, adapter: Path | str | None) -> Iterator:
    """`model` with the LoRA adapter at `adapter` applied (or as it is, for None), for evaluation;
    the adapter layers are removed again on exit, leaving `model` unchanged."""
    if adapter is None:
        yield model
        return
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(model, adapter)
    wrapped.eval()
    try:
        yield wrapped
    finally:
        wrapped.unload()

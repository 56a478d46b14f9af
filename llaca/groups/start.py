"""Where a new instruction group's adapter starts: the base model, or what earlier groups learned.

A new group (a kind of question no group holds yet) gets its own LoRA adapter, so teaching it
cannot change what other groups answer. What it starts from decides how much it must learn
again. One decision, used by the benchmark's group methods and by the worker's group policy:

- ``fresh``: a new LoRA from the base model (the paper's ICML version; `llaca+groups`).
- ``probe``: a copy of the served adapter that already answers the new group's first
  corrections best: each group's adapter and the base model answer up to `PROBE_SAMPLES` of
  them (`probe`: greedy answers and the answers' token loss); the adapter with the most right
  answers (then the lowest loss) is copied if it answers at least `TRANSFER_ACCURACY` of them
  right and more than the base model, else the group starts fresh. The source group's own
  adapter is never written.
- ``scene``: a copy of the adapter of the group whose images look clearly most like the new
  group's: the distance is 1 - the cosine between the mean CLIP embeddings (the vision
  tower's pooled output, which no adapter changes) of up to `PROBE_SAMPLES` images of each,
  and the nearest group is copied only if it is at most `SCENE_RATIO` times as far as the
  runner-up (with one group there is nothing to compare: fresh); otherwise the group starts
  fresh. A skill about the same
  kind of scene (several scattered shapes, one shape, a letter) is the one to build on; when
  several groups are as near, the new skill is about something else in the image. Nor is it
  copied when the base model already says more of the corrected answers than that adapter
  does (`Fit.contains`: "The star is green." for "green"): a copy would overwrite what the
  base model knows, which a fresh LoRA starts from (measured: an `unanswerable` group copied
  from `box` answers 50% instead of 98%, never saying "unanswerable").
- ``transfer`` starts as ``scene`` does; the method (`llaca+groups+transfer`) also joins new
  wordings to their group by their answers (`llaca.groups.grouping`). It does not take ``probe``'s
  copy: an adapter that answers part of the new corrections can still be the wrong one to
  build on (measured: `unanswerable` copied from a group that answers colours, 50% instead
  of 98%: the copy keeps answering a colour and never learns to say "unanswerable").
- ``subspace``: the down-projections (LoRA's A) of the adapter with the lowest probe loss, the
  up-projections (B) zero, as a fresh LoRA's: the new adapter starts as the base model (its
  update is zero) but learns in the directions the related group found useful.
- ``similar``: a copy of the adapter of the group whose stored instructions are most like the
  new group's (the codebook's score; it stayed under the match threshold, or the group would
  not be new); fresh if no group shares a word with them.
- ``merged``: the served groups' adapters combined into one of the same rank (peft's
  ``add_weighted_adapter``, SVD of the equally weighted sum of their updates).

`start_adapter` returns the folder the new group's training starts from (None: fresh) and a
record of the decision (the candidates' losses or scores) for the run's metrics.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llaca.learn.dataset import VQASample
from llaca.learn.encoding import answer_loss, encode_supervised
from llaca.learn.evaluate import is_correct, normalize

log = logging.getLogger(__name__)

STARTS: tuple[str, ...] = ("fresh", "probe", "scene", "transfer", "subspace", "similar", "merged")
PROBE_SAMPLES = 16  # of the new group's corrections, the first ones the probe scores
TRANSFER_ACCURACY = 0.2  # a probe start copies an adapter that answers at least this share right
SCENE_RATIO = 0.5  # a scene start copies the nearest group if it is at most this fraction as far as the next
BASE = "base"  # the base model's name in a probe's losses


@dataclass
class Start:
    """The decision: the adapter folder to copy (None: a fresh LoRA), which group's it is, and
    the evidence (per candidate, its probe loss or instruction score)."""

    adapter: Path | None
    source: str | None
    kind: str
    evidence: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        return {"start": self.kind, "from_group": self.source,
                "evidence": {k: round(v, 4) for k, v in self.evidence.items()}}


def check_start(kind: str) -> str:
    if kind not in STARTS:
        raise ValueError(f"unknown group start {kind!r}; choose one of: {', '.join(STARTS)}")
    return kind


@dataclass(frozen=True)
class Fit:
    """How well one candidate (the base model or a group's adapter) already answers a probe:
    the share of the samples it answers right (greedy, `is_correct`), the answers' mean token
    loss, and the share whose answer contains the right one (`contains_answer`: the base model
    says "The star is green." where the correction says "green")."""

    accuracy: float
    loss: float
    contains: float = 0.0


def contains_answer(prediction: str, reference: str) -> bool:
    """Whether `prediction` says `reference` somewhere: its words in order among the
    prediction's (a one-letter reference must appear as that capital letter on its own)."""
    if is_correct(prediction, reference):
        return True
    if len(reference.strip()) == 1:
        return reference.strip() in re.findall(r"\b\w\b", prediction)
    ref, words = normalize(reference).split(), normalize(prediction).split()
    return bool(ref) and any(words[i:i + len(ref)] == ref for i in range(len(words) - len(ref) + 1))


@torch.no_grad()
def probe(model, processor, adapters: Mapping[str, Path], samples: Sequence[VQASample],
          shared=None) -> dict[str, Fit]:
    """How the base model (`BASE`) and each adapter {group: folder} answer up to `PROBE_SAMPLES`
    of `samples`: one batched greedy generation and one forward each. With `shared` (the app's
    `SharedModel`) the adapters answer on it, one resident at a time, rows of this thread only."""
    from llaca.learn.evaluate import generate_answers

    samples = list(samples)[:PROBE_SAMPLES]
    if not samples:
        return {}
    batch = encode_supervised(processor, samples)

    def fit(m) -> Fit:
        answers = generate_answers(m, processor, samples, max_new_tokens=24)
        right = sum(is_correct(a, s.answer) for a, s in zip(answers, samples))
        said = sum(contains_answer(a, s.answer) for a, s in zip(answers, samples))
        return Fit(right / len(samples), float(answer_loss(m, _to_model(batch, m))), said / len(samples))

    if shared is not None:
        from llaca.model.shared import adapter_key

        out = {}
        for group, path in [(BASE, None), *adapters.items()]:
            with shared.answering(adapter_key(path) if path else None, path) as m:
                out[group] = fit(m)
        return out
    from llaca.groups.routed import RoutedModel

    out = {BASE: fit(model)}
    with RoutedModel(model, adapters) as routed:
        for group in adapters:
            routed.model.set_adapter(group)
            out[group] = fit(routed.model)
    return out


@torch.no_grad()
def scene_vector(model, processor, samples: Sequence[VQASample], shared=None) -> torch.Tensor:
    """The mean of the L2-normalised CLIP embeddings of up to `PROBE_SAMPLES` images (normalised)."""
    import torch.nn.functional as F

    images = [s.image for s in list(samples)[:PROBE_SAMPLES]]
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def embed(m) -> torch.Tensor:
        llava = getattr(m, "get_base_model", lambda: m)()
        p = next(q for q in llava.parameters() if q.is_floating_point())
        pooled = llava.model.vision_tower(pixels.to(p.device, p.dtype)).pooler_output
        return F.normalize(F.normalize(pooled.float(), dim=-1).mean(0), dim=0).cpu()

    if shared is not None:
        with shared.answering(None, None) as m:
            return embed(m)
    return embed(model)


def best_fit(fits: Mapping[str, Fit]) -> str | None:
    """The group whose adapter answers the probe best: most right, then lowest loss; None when
    there is no group or none answers more right than the base model."""
    groups = {g: f for g, f in fits.items() if g != BASE}
    if not groups:
        return None
    best = min(groups, key=lambda g: (-groups[g].accuracy, groups[g].loss, g))
    base = fits.get(BASE)
    return best if base is None or groups[best].accuracy > base.accuracy else None


def _to_model(batch: dict, model) -> dict:
    p = next(model.parameters())
    dtype = next(q for q in model.parameters() if q.is_floating_point()).dtype
    out = {k: v.to(p.device) for k, v in batch.items()}
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def down_projections_only(adapter: Path, out_dir: Path) -> Path:
    """A copy of the adapter at `adapter` with every LoRA B (up-projection) zeroed."""
    import shutil

    from safetensors.torch import load_file, save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(adapter / "adapter_config.json", out_dir / "adapter_config.json")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in tensors.items()},
              str(out_dir / "adapter_model.safetensors"))
    return out_dir


def merged_adapter(model, adapters: Mapping[str, Path], out_dir: Path) -> Path:
    """The groups' adapters combined into one of the same rank, written to `out_dir`."""
    from peft import PeftModel

    names = list(adapters)
    wrapped = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    try:
        for name in names[1:]:
            wrapped.load_adapter(adapters[name], adapter_name=name)
        rank = wrapped.peft_config[names[0]].r
        wrapped.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "merged",
                                     combination_type="svd", svd_rank=rank)
        wrapped.save_pretrained(out_dir, selected_adapters=["merged"])
    finally:
        wrapped.unload()
    return Path(out_dir) / "merged"  # peft writes a non-default adapter into a subfolder


def start_adapter(kind: str, model, processor, adapters: Mapping[str, Path], samples: Sequence[VQASample],
                  codebook=None, instructions: Sequence[str] = (), shared=None,
                  scratch: Path | None = None, fits: Mapping[str, Fit] | None = None,
                  group_samples: Mapping[str, Sequence[VQASample]] | None = None) -> Start:
    """Decide where a new group starts (module docstring). `adapters` are the existing groups'
    adapter folders; `samples` the new group's corrections; `codebook` and `instructions` are
    needed by ``similar``; `scratch` is where ``merged`` and ``subspace`` write theirs; `fits`, a
    probe already run on these samples and adapters, saves running it again; `group_samples`
    (``scene``) gives each group's taught samples, for their images."""
    check_start(kind)
    if kind == "fresh" or not adapters:
        return Start(None, None, kind)
    if kind == "subspace" and not fits:
        fits = probe(model, processor, adapters, samples, shared=shared)
    if kind == "probe":
        fits = fits or probe(model, processor, adapters, samples, shared=shared)
        best = best_fit(fits)
        if best is None or fits[best].accuracy < TRANSFER_ACCURACY:
            best = None
        evidence = {f"{g} accuracy": f.accuracy for g, f in fits.items()} | {f"{g} loss": f.loss for g, f in fits.items()}
        return Start(Path(adapters[best]) if best else None, best, kind, evidence)
    if kind in ("scene", "transfer"):
        if group_samples is None:
            raise ValueError(f"the {kind} start needs each group's taught samples")
        mine = scene_vector(model, processor, samples, shared)
        distance = {g: 1.0 - float(mine @ scene_vector(model, processor, group_samples[g], shared))
                    for g in adapters if group_samples.get(g)}
        order = sorted(distance, key=lambda g: (distance[g], g))
        clear = len(order) > 1 and distance[order[0]] <= SCENE_RATIO * distance[order[1]]
        best = order[0] if order and clear else None
        evidence = {f"{g} distance": d for g, d in distance.items()}
        if best is not None:  # never overwrite what the base model already says about these questions
            fits = probe(model, processor, {best: adapters[best]}, samples, shared=shared)
            evidence |= {"base says": fits[BASE].contains, f"{best} says": fits[best].contains}
            if fits[BASE].contains > fits[best].contains:
                best = None
        return Start(Path(adapters[best]) if best else None, best, kind, evidence)
    if kind == "subspace":
        groups = {g: f for g, f in fits.items() if g != BASE}
        best = min(groups, key=lambda g: (groups[g].loss, g))
        scratch = Path(scratch or tempfile.mkdtemp(prefix="llaca-subspace-"))
        evidence = {f"{g} loss": f.loss for g, f in fits.items()}
        return Start(down_projections_only(Path(adapters[best]), scratch / "subspace"), best, kind, evidence)
    if kind == "similar":
        if codebook is None or not instructions:
            raise ValueError("the similar start needs the codebook and the new group's instructions")
        scores: dict[str, float] = {}
        for q in instructions:
            for g, s in codebook.scores(q).items():
                if g in adapters:
                    scores[g] = scores.get(g, 0.0) + s / len(instructions)
        best = max(scores, key=scores.get, default=None)
        if best is None or scores[best] <= 0.0:
            return Start(None, None, kind, scores)
        return Start(Path(adapters[best]), best, kind, scores)
    scratch = Path(scratch or tempfile.mkdtemp(prefix="llaca-merged-"))
    return Start(merged_adapter(model, adapters, scratch), ",".join(adapters), kind)

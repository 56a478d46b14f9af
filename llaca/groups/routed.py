"""A routed system: the base model plus one LoRA adapter per instruction group.

Every group's adapter is loaded once into one peft model as a named adapter (peft's
multi-adapter support); a question is answered by the adapter of the group its instruction
routes to, or by the base model (adapters disabled) when it routes to no group. Different
groups share no trainable weights, so teaching one cannot change another's answers.

`RoutedModel` is a context manager: on exit the adapter layers are removed and the base
model is left as it was. `routed_correct` answers sample sets through it (per item: the route
and whether the answer is right), batching the questions of each route; `evaluate_routed`
sums that into accuracy and route counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from llaca.learn.dataset import VQASample
from llaca.learn.evaluate import generate_answers, is_correct

Router = Callable[[str], "str | None"]


class RoutedModel:
    """`base` with the adapters {group id: folder} loaded as named peft adapters."""

    def __init__(self, base, adapters: Mapping[str, Path | str]):
        self.base = base
        self.adapters = dict(adapters)
        self.model = base

    def __enter__(self) -> "RoutedModel":
        if self.adapters:
            from peft import PeftModel

            (first, path), *rest = self.adapters.items()
            self.model = PeftModel.from_pretrained(self.base, path, adapter_name=first)
            for name, p in rest:
                self.model.load_adapter(p, adapter_name=name)
            self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        if self.model is not self.base:
            self.model.unload()  # removes every adapter's layers: the base model is left as it was
            self.model = self.base

    def answer(self, processor, samples: Sequence[VQASample], routes: Sequence[str | None]) -> list[str]:
        """Greedy answers, each sample through its route's adapter (None: the base model)."""
        answers: list[str | None] = [None] * len(samples)
        for route in dict.fromkeys(routes):
            idx = [i for i, r in enumerate(routes) if r == route]
            chunk = [samples[i] for i in idx]
            if route is None or self.model is self.base:
                if route is not None:
                    raise KeyError(f"no adapter loaded for group {route!r}")
                if self.model is self.base:
                    got = generate_answers(self.base, processor, chunk)
                else:
                    with self.model.disable_adapter():
                        got = generate_answers(self.model, processor, chunk)
            else:
                if route not in self.adapters:
                    raise KeyError(f"no adapter loaded for group {route!r}")
                self.model.set_adapter(route)
                got = generate_answers(self.model, processor, chunk)
            for i, a in zip(idx, got):
                answers[i] = a
        return answers  # type: ignore[return-value]


def routed_correct(base, processor, adapters: Mapping[str, Path | str], route: Router,
                   sets: Sequence[Sequence[VQASample]], shared=None) -> list[tuple[list[str | None], list[bool]]]:
    """For each sample set: (each sample's route, whether its routed answer is right). With
    `shared` (a `SharedModel`) the routes are answered on it, one adapter pinned at a time."""
    if shared is not None:
        return _shared_routed_correct(shared, processor, adapters, route, sets)
    out = []
    with RoutedModel(base, adapters) as routed:
        for samples in sets:
            routes = [route(s.question) for s in samples]
            answers = routed.answer(processor, samples, routes) if samples else []
            out.append((routes, [is_correct(a, s.answer) for a, s in zip(answers, samples)]))
    return out


def _shared_routed_correct(shared, processor, adapters, route: Router, sets) -> list[tuple[list, list[bool]]]:
    routes = [[route(s.question) for s in samples] for samples in sets]
    answers: list[list[str | None]] = [[None] * len(samples) for samples in sets]
    for name in dict.fromkeys(r for rs in routes for r in rs):  # each adapter resident once, for all sets
        where = [(k, i) for k, rs in enumerate(routes) for i, r in enumerate(rs) if r == name]
        with shared.answering(name, adapters.get(name) if name else None) as model:
            got = generate_answers(model, processor, [sets[k][i] for k, i in where])
        for (k, i), a in zip(where, got):
            answers[k][i] = a
    return [(rs, [is_correct(a, s.answer) for a, s in zip(ans, samples)])
            for rs, ans, samples in zip(routes, answers, sets)]


def evaluate_routed(base, processor, adapters: Mapping[str, Path | str], route: Router,
                    sets: Sequence[Sequence[VQASample]]) -> list[dict]:
    """For each sample set: {"accuracy": %, "routes": {group or "base": n}} through routing."""
    results = []
    for routes, correct in routed_correct(base, processor, adapters, route, sets):
        counts: dict[str, int] = {}
        for r in routes:
            counts[r or "base"] = counts.get(r or "base", 0) + 1
        results.append({"accuracy": round(100.0 * sum(correct) / max(1, len(correct)), 2), "routes": counts})
    return results

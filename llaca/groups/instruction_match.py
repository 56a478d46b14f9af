"""How a question's words are compared with an instruction group's: the codebook's matchers.

Owns the text side of `llaca.groups.codebook.InstructionCodebook`: what an instruction is
(`instruction_text`), how slot values are recognised (`slot_pattern`), and the two scorers,
`NearestIndex` (the default) and `ReleasedIndex` (the authors' rule). The codebook decides
with their scores; it owns the groups.

Matchers
--------
``nearest`` (the default). The instruction is normalised (``<image>`` dropped, lower case,
whitespace collapsed) and its *slots* are masked to one token: numbers, single capital letters
(option letters, letters asked about) and a slot vocabulary, by default the world's colour and
shape names (`llaca.world.palette`) with their plurals. One `TfidfVectorizer` (word 1-2 grams)
is fit over the codebook's distinct masked instructions, so words that every group uses weigh
little. A question scores, per group, the cosine to its *nearest* stored instruction; its
words the codebook has never seen count in its norm with the largest IDF (an unseen word is
evidence *against* every group, not silence). The best group wins if its score is at least
`threshold` and beats the runner-up group by at least `margin`; otherwise the answer is None.
`match` averages each instruction's per-group score over the set.

``released``: the rule of the authors' ``instruct/LoRASelect.py``: a group's score is the mean
over all (current, stored) instruction pairs of the TF-IDF cosine, with a
``TfidfVectorizer(stop_words='english')`` fit on each pair; arg-max group, reused if the score
is at least the threshold (0.90 for fixed instructions, 0.30 for diverse templates), no margin,
no masking. ``last_line=True`` also takes the released instruction string, the last line of the
question. Kept for comparison; its cost grows with the number of stored instructions.

Measured with ``python benchmarks/routing.py`` (48 training questions per continual family,
200 held-out questions of every family; benchmarks/results/routing.md): `nearest` routes all
2600 held-out questions right (each continual family to its group; color, shape, describe and
the base-training templates objects, find, edges to None), each continual family's new buffer
matches its own group only, and no base family matches a group. Own-group scores are 1.0; the
highest score of a wrong group is 0.42 (`color` against `unanswerable`), hence the threshold
0.60 and the margin 0.10. Unmasked (99.35%), the colour and shape words of `exists`, `choice` and
`unanswerable` make unseen combinations score low against their own group. The released rule
routes 76.9% at 0.90 (`exists`, `choice`, `unanswerable` all go to the base model) and 89.4% at
0.30 (`describe` and part of `find` go to the `letter` group); on masked text it routes all
right too: masking is what separates these families. `nearest` stays the default because its
cost does not grow with the stored instructions (a matrix product, against a Python loop over
every stored pair: 15 against 165 us uncached on the unmasked codebook), a group that holds
several templates still scores 1.0 on each (the released mean over pairs divides it), and the
margin sends questions that two groups fit alike to the base model.

Speed: routing looks the masked text up in a bounded dict of decisions (cleared when full, and
replaced when a group is added); a miss scores against a dense matrix of the stored instruction
vectors without going through sklearn's `transform`: about 3 us cached, 16 us uncached (CPU).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer


def slot_pattern(words: Iterable[str]) -> re.Pattern:
    """A regex for a run of slot values: numbers, single capital letters, and `words` (any case,
    plural), separated only by spaces or punctuation ("red star", "A. red\\nB. blue")."""
    alternatives = [r"\d+(?:[.,]\d+)*", r"[A-Z]"]
    names = sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True)
    if names:
        alternatives.append(r"(?i:(?:" + "|".join(re.escape(w) for w in names) + r")(?:e?s)?)")
    value = r"\b(?:" + "|".join(alternatives) + r")\b"
    return re.compile(value + r"(?:\W+" + value + r")*")  # a run of values ("A. red") is one slot


def instruction_text(question: str, last_line: bool = False) -> str:
    """The instruction of a question: the text without ``<image>``; its last non-empty line if
    `last_line` (the released rule's instruction string)."""
    text = question.replace("<image>", " ")
    if last_line:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    return text


class NearestIndex:
    """Codebook-wide TF-IDF over distinct normalised instructions; per group, the nearest one."""

    def __init__(self, group_docs: list[list[tuple[str, int]]]):
        self.n_groups = len(group_docs)
        docs, present, starts = [], [], []
        probe = TfidfVectorizer(ngram_range=(1, 2)).build_analyzer()
        for g, items in enumerate(group_docs):
            usable = [text for text, _ in items if probe(text)]
            if usable:
                present.append(g)
                starts.append(len(docs))
                docs.extend(usable)
        self.present = np.array(present, dtype=np.intp)
        self.starts = np.array(starts, dtype=np.intp)
        self.vocab: dict[str, int] = {}
        if not docs:
            return
        vectorizer = TfidfVectorizer(ngram_range=(1, 2)).fit(docs)
        self.analyse = vectorizer.build_analyzer()
        self.vocab = vectorizer.vocabulary_
        self.idf = vectorizer.idf_
        self.unseen_idf = math.log(1 + len(docs)) + 1.0  # smooth IDF of a term in no document
        # Rows are L2-normalised; transposed so a query's columns are contiguous rows.
        self.matrix_t = np.ascontiguousarray(vectorizer.transform(docs).toarray().T)
        self.vectorizer = vectorizer

    def scores(self, text: str) -> np.ndarray:
        if not self.vocab:
            return np.zeros(self.n_groups)
        counts: dict[str, int] = {}
        for token in self.analyse(text):
            counts[token] = counts.get(token, 0) + 1
        cols, tf, unseen = [], [], 0.0
        for token, c in counts.items():
            j = self.vocab.get(token)
            if j is None:
                unseen += (c * self.unseen_idf) ** 2
            else:
                cols.append(j)
                tf.append(c)
        if not cols:
            return np.zeros(self.n_groups)
        w = np.asarray(tf, dtype=np.float64) * self.idf[cols]
        sims = (w @ self.matrix_t[cols]) / math.sqrt(float(w @ w) + unseen)
        out = np.zeros(self.n_groups)
        out[self.present] = np.maximum.reduceat(sims, self.starts)
        return out


class ReleasedIndex:
    """The released rule: per group, the count-weighted mean over stored instructions of the
    TF-IDF cosine under a ``TfidfVectorizer(stop_words='english')`` fit on each (current,
    stored) pair. With two documents and sklearn's smooth IDF, a term in both weighs
    ln(3/3) + 1 = 1 and a term in one ln(3/2) + 1, so the per-pair fit has a closed form,
    computed here on the vectorizer's own tokens (tests check it against real per-pair fits)."""

    ONE_SIDED_IDF = math.log(1.5) + 1.0

    def __init__(self, group_docs: list[list[tuple[str, int]]]):
        self.analyse = TfidfVectorizer(stop_words="english").build_analyzer()
        self.groups = [[(self.counts(doc), c) for doc, c in items] for items in group_docs]
        self.totals = [sum(c for _, c in items) for items in group_docs]

    def counts(self, text: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for token in self.analyse(text):
            out[token] = out.get(token, 0) + 1
        return out

    @classmethod
    def pair_cosine(cls, a: dict[str, int], b: dict[str, int]) -> float:
        if not a or not b:  # no tokens left (sklearn: empty vocabulary or a zero vector)
            return 0.0
        one = cls.ONE_SIDED_IDF
        dot = sum(c * b[t] for t, c in a.items() if t in b)
        na = sum((c * (1.0 if t in b else one)) ** 2 for t, c in a.items())
        nb = sum((c * (1.0 if t in a else one)) ** 2 for t, c in b.items())
        return dot / math.sqrt(na * nb)

    def scores(self, text: str) -> np.ndarray:
        q = self.counts(text)
        return np.array([
            sum(c * self.pair_cosine(q, doc) for doc, c in items) / total
            for items, total in zip(self.groups, self.totals)
        ])

"""The instruction codebook (llaca/groups/codebook.py): matching, thresholds, margin, routing, state."""

from __future__ import annotations

import json

import pytest

from llaca.groups.codebook import CodebookError, InstructionCodebook
from llaca.groups.instruction_match import slot_pattern
from llaca.world.families import CONTINUAL_SEQUENCE, FAMILIES, generate

TRAIN_SEED, HELDOUT_SEED = 0, 10_000


def questions(family: str, n: int, seed: int) -> list[str]:
    return [item.turns[0][0] for item in generate(family, n, seed)]


@pytest.fixture(scope="module")
def taught():
    """A codebook with one group per continual family (48 training questions each)."""
    book = InstructionCodebook()
    groups = {f: book.add(questions(f, 48, TRAIN_SEED), name=f) for f in CONTINUAL_SEQUENCE}
    return book, groups


EXISTS = ["Is there a red circle? Answer yes or no.", "Is there a blue star? Answer yes or no."]
LETTER = ["What letter is written in the image?"]
COUNT = ["How many shapes are there?"]


# --- empty codebook ----------------------------------------------------------------------------

def test_empty_codebook_routes_to_base_and_matches_nothing(tmp_path):
    for matcher in ("nearest", "released"):
        book = InstructionCodebook(matcher=matcher)
        assert len(book) == 0 and book.groups == []
        assert book.route("What letter is written in the image?") is None
        assert book.match(LETTER) == (None, 0.0)
        assert book.scores("anything") == {}
        book.save(tmp_path / f"{matcher}.json")
        again = InstructionCodebook.load(tmp_path / f"{matcher}.json")
        assert len(again) == 0 and again.route("How many shapes are there?") is None


# --- matching and adding ------------------------------------------------------------------------

def test_add_creates_stable_ids_and_extends_groups():
    book = InstructionCodebook()
    g1 = book.add(EXISTS)
    g2 = book.add(LETTER, name="letters")
    assert (g1, g2) == ("g1", "g2")
    assert book.add(["Is there a green square? Answer yes or no."], g1) == g1
    listed = {g.id: g for g in book.groups}
    assert listed[g1].count == 3 and listed[g1].distinct == 1  # slots masked: one template
    assert listed[g1].name == EXISTS[0]
    assert listed[g2].name == "letters" and listed[g2].count == 1
    book.remove(g1)
    assert book.add(COUNT) == "g3"  # ids are never reused
    with pytest.raises(KeyError):
        book.add(COUNT, "g1")
    with pytest.raises(TypeError):
        book.add("How many shapes are there?")
    with pytest.raises(ValueError):
        book.add([])


def test_match_finds_own_group_and_rejects_unrelated():
    book = InstructionCodebook()
    g_exists, g_letter = book.add(EXISTS), book.add(LETTER)
    gid, score = book.match(["Is there a yellow triangle? Answer yes or no.", "Is there a purple star? Answer yes or no."])
    assert gid == g_exists and score == pytest.approx(1.0)
    assert book.match(["Which letter is written in the image?"])[0] == g_letter
    gid, score = book.match(["Describe the image."])
    assert gid is None and 0.0 <= score < book.threshold


def test_assign_reuses_or_creates():
    book = InstructionCodebook()
    assert book.assign(EXISTS, name="exists") == ("g1", True)
    assert book.assign(["Is there a red star? Answer yes or no."]) == ("g1", False)
    assert book.assign(COUNT) == ("g2", True)
    assert [g.name for g in book.groups] == ["exists", COUNT[0]]


def test_threshold_high_creates_new_group_low_merges():
    near = ["Which letter is written in the image?"]  # a paraphrase of LETTER
    low, high = InstructionCodebook(threshold=0.3), InstructionCodebook(threshold=0.95)
    for book in (low, high):
        book.add(LETTER)
        book.add(COUNT)
    s = low.match(near)[1]
    assert 0.3 < s < 0.95
    assert low.assign(near) == ("g1", False)
    assert high.assign(near) == ("g3", True)


def test_released_matcher_thresholds():
    """The released rule: mean pairwise per-pair TF-IDF cosine; 0.90 splits, 0.30 merges."""
    strict, loose = InstructionCodebook(matcher="released", threshold=0.9), InstructionCodebook(matcher="released", threshold=0.3)
    for book in (strict, loose):
        book.add(["Is there a red circle? Answer yes or no."])
    buffer = ["Is there a blue star? Answer yes or no."]
    s = strict.match(buffer)[1]
    assert 0.3 < s < 0.9  # colour and shape words differ: below the fixed-instruction threshold
    assert strict.match(buffer)[0] is None and loose.match(buffer)[0] == "g1"
    assert strict.match(["Is there a red circle? Answer yes or no."]) == ("g1", pytest.approx(1.0))
    # only stop words: nothing to compare, score 0 rather than an error
    assert loose.match(["Is it?"]) == (None, 0.0)


def test_released_pair_cosine_equals_a_vectorizer_fit_per_pair():
    """The released scorer's closed form is the per-pair TfidfVectorizer(stop_words='english') fit."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from llaca.groups.instruction_match import ReleasedIndex

    index = ReleasedIndex([])
    texts = [q for f in FAMILIES for q in questions(f, 3, 50_000)]
    texts += ["Is it?", "", "red red red circle", "circle circle red", "What is the answer? 42 answers"]
    for a in texts:
        for b in texts[::3]:
            try:
                x = TfidfVectorizer(stop_words="english").fit_transform([a, b])
                expected = float(x[0].multiply(x[1]).sum())
            except ValueError:  # empty vocabulary
                expected = 0.0
            assert index.pair_cosine(index.counts(a), index.counts(b)) == pytest.approx(expected, abs=1e-12), (a, b)


def test_margin_rejects_ambiguous_questions():
    """Two groups that fit a question equally well: the runner-up is within the margin."""
    a = ["What color is the star? If it is not in the image, answer unanswerable."]
    b = ["What color is the star?\nA. red\nB. blue\nC. green\nAnswer with the option's letter from the given choices directly."]
    q = "What color is the circle?"
    strict, lax = InstructionCodebook(threshold=0.3, margin=0.5), InstructionCodebook(threshold=0.3, margin=0.0)
    for book in (strict, lax):
        book.add(a)
        book.add(b)
    s = sorted(strict.scores(q).values())
    assert s[-1] >= 0.3 and s[-1] - s[-2] < 0.5
    assert strict.route(q) is None and strict.match([q])[0] is None
    assert lax.route(q) is not None


def test_nearest_keeps_a_group_with_several_templates():
    """A group holding two templates still fits each fully; the released mean over pairs halves it."""
    nearest, released = InstructionCodebook(), InstructionCodebook(matcher="released", threshold=0.9)
    for book in (nearest, released):
        book.add(LETTER + COUNT)
    assert nearest.route(LETTER[0]) == nearest.route(COUNT[0]) == "g1"
    assert released.route(LETTER[0]) is None
    assert released.scores(LETTER[0])["g1"] == pytest.approx(0.5)


def test_unseen_words_count_against_a_group():
    book = InstructionCodebook()
    book.add(LETTER)
    plain = book.scores("What letter is written?")["g1"]
    padded = book.scores("What letter is written? Please reply politely using your best handwriting")["g1"]
    assert padded < plain


# --- routing -----------------------------------------------------------------------------------

def test_continual_families_route_to_own_group_and_base_families_to_none(taught):
    book, groups = taught
    assert set(groups.values()) == {g.id for g in book.groups}
    for family in FAMILIES:
        held_out = questions(family, 100, HELDOUT_SEED)
        routed = [book.route(q) for q in held_out]
        expected = groups.get(family)  # None for every family not taught: the base model
        accuracy = sum(r == expected for r in routed) / len(routed)
        assert accuracy >= 0.99, (family, expected, {r: routed.count(r) for r in set(routed)})


def test_training_time_match_finds_own_group_only(taught):
    book, groups = taught
    for family in FAMILIES:
        gid, score = book.match(questions(family, 48, 20_000))
        assert gid == groups.get(family), (family, gid, score)


def test_cached_route_equals_uncached(taught):
    book, _ = taught
    qs = [q for f in FAMILIES for q in questions(f, 20, 30_000)]
    qs += ["Where is the red star?", "Find the letter K.", "How many objects are in the image?", "", "???"]
    book.clear_cache()
    first = [book.route(q) for q in qs]
    cached = [book.route(q) for q in qs]
    uncached = []
    for q in qs:
        book.clear_cache()
        uncached.append(book.route(q))
    assert first == cached == uncached
    # and the fast scorer agrees with sklearn's transform (no unseen words in these questions)
    index = book._index.scorer
    for q in ("How many shapes are there?", "Is there a red star? Answer yes or no."):
        key = book.normalise(q)
        direct = (index.vectorizer.transform([key]).toarray() @ index.matrix_t).ravel()
        assert max(direct) == pytest.approx(max(book.scores(q).values()))


def test_cache_is_bounded_and_dropped_on_add():
    book = InstructionCodebook(cache_size=4)
    book.add(LETTER)
    for i in range(10):
        book.route(f"How many things number{i}?")
        assert len(book._index.cache) <= 4
    assert book.route("How many shapes are there?") is None
    book.add(COUNT)  # a new group: a cached "base" decision must not survive
    assert book.route("How many shapes are there?") == "g2"


def test_slot_masking():
    pattern = slot_pattern(["red", "star"])
    assert pattern.sub("_", "Is there a red star? Answer yes or no.") == "Is there a _? Answer yes or no."
    assert pattern.sub("_", "Stars and REDS or 0.25 and 3; A. red\nB. star") == "_ and _ or _ and _"
    assert pattern.sub("_", "I see a starfish in a bored mood") == "_ see a starfish in a bored mood"
    book = InstructionCodebook(slot_words=["alpha"])
    assert book.normalise("<image>\nIs there an  ALPHA\tnear 3?") == "is there an _slot_ near _slot_?"
    assert InstructionCodebook(mask_slots=False).normalise("Is there a red star?") == "is there a red star?"


# --- state -------------------------------------------------------------------------------------

def test_save_load_round_trip_routes_identically(taught, tmp_path):
    book, groups = taught
    path = tmp_path / "codebook.json"
    book.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    state = json.loads(path.read_text())
    assert state["version"] == 1 and state["matcher"]["name"] == "nearest"
    again = InstructionCodebook.load(path)
    assert again.settings() == book.settings()
    assert again.groups == book.groups
    qs = [q for f in FAMILIES for q in questions(f, 15, 40_000)] + ["Where is the red star?", "Describe it."]
    assert [again.route(q) for q in qs] == [book.route(q) for q in qs]
    assert [again.scores(q) for q in qs[:20]] == [book.scores(q) for q in qs[:20]]
    assert again.add(COUNT) == f"g{len(groups) + 1}"  # next id survives the round trip


def test_released_settings_survive_save(tmp_path):
    book = InstructionCodebook(matcher="released", threshold=0.9, last_line=True)
    book.add(["What color is the star?\nA. red\nB. blue\nC. green\nAnswer with the option's letter."])
    book.save(tmp_path / "c.json")
    again = InstructionCodebook.load(tmp_path / "c.json")
    assert again.settings() == book.settings() and again.matcher == "released" and again.last_line
    q = "What color is the circle?\nA. blue\nB. red\nC. green\nAnswer with the option's letter."
    assert again.route(q) == book.route(q) == "g1"  # the last line decides


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else", "version": 1}', "not an instruction codebook"),
    ('{"format": "llaca-instruction-codebook", "version": 99}', "unsupported codebook version 99"),
    ('{"format": "llaca-instruction-codebook", "version": 1, "matcher": {}}', "malformed"),
    ('[1, 2]', "not an instruction codebook"),
])
def test_corrupt_file_raises_codebook_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(CodebookError, match=message):
        InstructionCodebook.load(path)


def test_inconsistent_state_raises_codebook_error():
    book = InstructionCodebook()
    book.add(LETTER)
    book.add(COUNT)
    good = book.to_json()
    for corrupt in (
        lambda s: s.update(next_id=2),  # would reuse g2
        lambda s: s["groups"].append(dict(s["groups"][0])),  # duplicate id
        lambda s: s["groups"][0].update(instructions=[["x", 0]]),
        lambda s: s["groups"][0].update(instructions=[]),
        lambda s: s["matcher"].update(name="magic"),
        lambda s: s["matcher"].update(threshold=3),
    ):
        state = json.loads(json.dumps(good))
        corrupt(state)
        with pytest.raises(CodebookError):
            InstructionCodebook.from_json(state)
    assert InstructionCodebook.from_json(json.loads(json.dumps(good))).route(COUNT[0]) == "g2"

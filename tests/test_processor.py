"""The offline tokenizer/processor: LLaVA-1.5 rendering, image-token expansion, answer-only labels."""

from __future__ import annotations

import pytest
from PIL import Image

from llaca.learn.dataset import VQASample
from llaca.learn.encoding import IGNORE, encode_supervised, render_with_answer_spans
from llaca.model.chat import messages_for
from llaca.world.processor import IMAGE_ID, build_processor


@pytest.fixture(scope="module")
def proc():
    return build_processor(96, 16)


def test_chat_template_renders_llava_15_exactly(proc):
    turns = [("What color is the shape?", "red"), ("What shape is this?", None)]
    text = proc.apply_chat_template(messages_for(turns), add_generation_prompt=True)
    assert text == "USER: <image>\nWhat color is the shape? ASSISTANT: red</s>USER: What shape is this? ASSISTANT:"
    plain = proc.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert plain == "USER: hi ASSISTANT:"


def test_tokenizer_is_offline_bytelevel_with_special_tokens(proc):
    tok = proc.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_ID and tok.image_token == "<image>"
    ids = tok("What color is the shape? ASSISTANT: orange")["input_ids"]
    assert ids[0] == tok.bos_token_id
    for word in ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "star"]:
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    odd = "Ünïcödé ✓ 数字 — anything a user types"
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd  # byte-level: nothing is lost


def test_image_tokens_expand_to_the_patch_grid(proc):
    out = proc(images=Image.new("RGB", (200, 120), "white"), text="USER: <image>\nhi ASSISTANT:", return_tensors="pt")
    assert int((out["input_ids"] == IMAGE_ID).sum()) == (96 // 16) ** 2
    assert tuple(out["pixel_values"].shape) == (1, 3, 96, 96)


def test_labels_cover_only_the_answers_and_their_eos(proc):
    img = Image.new("RGB", (64, 64), "white")
    s = VQASample("a", img, [("What color is the shape?", "red"), ("What shape is this?", "star")])
    batch = encode_supervised(proc, [s, VQASample("b", img, [("Describe the image.", "a blue circle at the top left")])])
    tok = proc.tokenizer
    for row, answers in [(0, [" red</s>", " star</s>"]), (1, [" a blue circle at the top left</s>"])]:
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE].tolist()
        assert tok.decode(kept) == "".join(answers)
        # ids under the labels are the same tokens, and no image/prompt token is labelled
        ids = batch["input_ids"][row]
        assert (ids[labels != IGNORE] == labels[labels != IGNORE]).all()
        assert not (labels == IMAGE_ID).any()
    # same ids as the processor itself gives for the full text (what serving sees)
    text, spans = render_with_answer_spans(proc, s.turns)
    ref = proc(images=img, text=text, return_tensors="pt")["input_ids"][0]
    n = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, :n].tolist() == ref.tolist()
    assert [text[a:b] for a, b in spans] == [" red</s>", " star</s>"]


def test_a_typed_image_tag_is_not_an_image_slot(proc):
    text = proc.apply_chat_template(messages_for([("what is <image> here?", None)]), add_generation_prompt=True)
    assert text.count("<image>") == 1
    out = proc(images=Image.new("RGB", (64, 64)), text=text, return_tensors="pt")
    assert int((out["input_ids"] == IMAGE_ID).sum()) == 36

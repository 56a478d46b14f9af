"""The embedded tiny LLaVA: plain-transformers loading, base accuracy, streaming, learnability, build."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import threading
import textwrap

import pytest
import torch

from llaca.encoding import answer_loss, encode_supervised
from llaca.evaluate import evaluate
from llaca.model import GenerationParams, answer, stream_answer
from llaca.world.build import BuildConfig, build, heldout
from llaca.world.vision_pretrain import VisionPretrainConfig
from tests.conftest import ROOT, TINY
from tests.other_drawing import other_code_samples
from tests.stop_probe import decoding_steps

PLAIN_TRANSFORMERS = textwrap.dedent(
    """
    import sys
    from PIL import Image, ImageDraw
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1])
    processor = AutoProcessor.from_pretrained(sys.argv[1])
    # drawn here, independently of the project's world code: a 128 px canvas, other positions
    cases = [("red", "circle", (20, 70, 60, 110)), ("blue", "square", (70, 10, 110, 50)),
             ("yellow", "triangle", [(90, 60), (120, 115), (60, 115)]), ("green", "circle", (40, 40, 90, 90))]
    rgb = {"red": (220, 30, 30), "blue": (30, 70, 220), "yellow": (240, 200, 20), "green": (30, 170, 60)}
    for color, shape, geom in cases:
        img = Image.new("RGB", (128, 128), (240, 240, 240))
        d = ImageDraw.Draw(img)
        {"circle": d.ellipse, "square": d.rectangle, "triangle": d.polygon}[shape](geom, fill=rgb[color])
        for q, want in [("What color is the shape?", color), ("What shape is this?", shape)]:
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
            prompt = processor.apply_chat_template(conv, add_generation_prompt=True)
            inputs = processor(images=img, text=prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
            got = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            print("RESULT", "color" if "color" in q else "shape", got == want, want, got)
    print("OK")
    """
)


def test_loads_and_answers_with_plain_transformers_only():
    r = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(TINY)], capture_output=True, text=True, timeout=300,
        cwd="/", env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]
    results = [line.split() for line in r.stdout.splitlines() if line.startswith("RESULT")]
    colour = [ok == "True" for _, kind, ok, *_ in results if kind == "color"]
    shape = [ok == "True" for _, kind, ok, *_ in results if kind == "shape"]
    assert len(colour) == len(shape) == 4
    assert all(colour), r.stdout
    assert all(shape), r.stdout


# The target is 97% on 500 fresh samples; the committed model measured colour 100% and shape
# 98.4-98.6% there (64 px, 128 px, 48-160 px). These 100-sample checks leave room for sampling noise.
FLOOR = {"color": 97.0, "shape": 95.0}


@pytest.mark.parametrize("family", ["color", "shape"])
@pytest.mark.parametrize("size", [64, 128, (48, 160)])
def test_base_families_are_known(tiny, family, size):
    res = evaluate(tiny.model, tiny.processor, heldout(family, 100, seed=4242, size=size))
    assert res.accuracy >= FLOOR[family], (family, size, res.accuracy)


@pytest.mark.parametrize("family", ["color", "shape"])
@pytest.mark.parametrize("side", [64, 128, 200])
def test_base_families_on_images_drawn_by_other_code(tiny, family, side):
    res = evaluate(tiny.model, tiny.processor, other_code_samples(family, 100, side, seed=1))
    assert res.accuracy >= FLOOR[family] - 2, (family, side, res.accuracy)


def test_multi_turn_keeps_the_image(tiny):
    for s in heldout("color", 5, seed=77):
        shape_alone = answer(tiny, [("What shape is this?", None)], s.image)
        # the second turn is about the same image: the answer is the same as when asked alone
        assert answer(tiny, [(s.question, s.answer), ("What shape is this?", None)], s.image) == shape_alone
        assert answer(tiny, [("What shape is this?", shape_alone), (s.question, None)], s.image) == s.answer


def test_streaming_yields_growing_text_and_stop_really_stops(tiny):
    s = heldout("describe", 1, seed=3)[0]
    chunks = list(stream_answer(tiny, [(s.question, None)], s.image, GenerationParams(temperature=0.0, max_new_tokens=64)))
    assert len(chunks) > 2 and all(chunks[i + 1].startswith(chunks[i]) for i in range(len(chunks) - 1))
    stop = threading.Event()
    with decoding_steps(tiny.model, stop) as steps:
        got = []
        for text in stream_answer(tiny, [(s.question, None)], s.image,
                                  GenerationParams(temperature=0.0, max_new_tokens=400), stop):
            got.append(text)
            stop.set()
    assert got and len(got[-1]) < len(chunks[-1])  # cut short
    assert steps["after_stop"] <= 1, steps  # at most the step under way when Stop was set


@pytest.mark.slow
@pytest.mark.parametrize("family,chance,steps,lr", [("count", 20.0, 300, 1e-3), ("position", 25.0, 80, 5e-4)])
def test_continual_families_are_learnable_by_a_short_fine_tune(tiny, family, chance, steps, lr):
    torch.manual_seed(0)
    model = copy.deepcopy(tiny.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    train = heldout(family, 600, seed=11)
    test = heldout(family, 80, seed=99)
    before = evaluate(model, tiny.processor, test).accuracy
    rng = random.Random(0)
    for step in range(steps):
        loss = answer_loss(model, encode_supervised(tiny.processor, rng.sample(train, 16)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    after = evaluate(model, tiny.processor, test).accuracy
    assert after >= chance + 20 and after > before + 20, (family, before, after)


@pytest.mark.slow
def test_a_shortened_build_learns(tmp_path):
    cfg = BuildConfig(steps=250, batch_images=16, eval_n=40, eval_sets=(("color", 64),), threads=None,
                      vision=VisionPretrainConfig(steps=120, batch_images=32, eval_n=40))
    record = build(cfg, tmp_path / "tiny", progress=False)
    vision = record["vision_pretraining"]
    assert vision["loss_last_50"] < 0.8 * vision["loss_first_50"]
    assert record["loss_last_50"] < 0.5 * record["loss_first_50"]
    assert record["heldout_accuracy"]["color@64"] > 35.0  # chance is 16.7
    assert (tmp_path / "tiny" / "model.safetensors").exists() and (tmp_path / "tiny" / "chat_template.jinja").exists()

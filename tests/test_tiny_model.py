"""The embedded tiny LLaVA: plain-transformers loading, base accuracy, streaming, learnability (its build: test_tiny_build.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from llaca.learn.evaluate import evaluate
from llaca.model.llava import GenerationParams, answer, stream_answer
from llaca.world.heldout import heldout
from tests.conftest import TINY
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


@pytest.mark.slow
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


# Targets on 500 fresh samples: colour >= 99%, shape >= 98% (64 and 128 px); see the build record
# and docs/tiny-model.md for the committed model's figures. These 100-sample checks leave room for noise.
FLOOR = {"color": 97.0, "shape": 95.0}


@pytest.mark.parametrize("family", ["color", "shape"])
@pytest.mark.parametrize("size", [64, 128, (48, 160)])
def test_base_families_are_known(tiny, family, size):
    res = evaluate(tiny.model, tiny.processor, heldout(family, 100, seed=4242, size=size))
    assert res.accuracy >= FLOOR[family], (family, size, res.accuracy)


def test_the_base_model_knows_the_concepts_the_continual_tasks_ask_about(tiny):
    """How many objects, whether one is there and where, its extent, and whole captions.

    Regression floors below the committed model's measured figures (objects 86-97, presence 76-80,
    edges 65, captions 81% of objects named right); the issue's targets are higher (see docs/tiny-model.md)."""
    from llaca.learn.evaluate import caption_object_score

    floors = {"objects": 78.0, "presence": 65.0, "edges": 52.0}
    for family, floor in floors.items():
        res = evaluate(tiny.model, tiny.processor, heldout(family, 100, seed=4243))
        assert res.accuracy >= floor, (family, res.accuracy, res.predictions[:5])
    samples = heldout("describe", 100, seed=4243)
    res = evaluate(tiny.model, tiny.processor, samples)
    objects = sum(caption_object_score(p, s.answer) for p, s in zip(res.predictions, samples)) / len(samples)
    assert objects >= 0.70, (objects, res.predictions[:5])


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
@pytest.mark.parametrize("family,floor", [("letter", 65.0)])
def test_a_users_buffer_of_48_teaches_a_continual_format(tiny, family, floor):
    """One single-task LoRA with the tuner's defaults on 48 samples: the format is learned on
    fresh images, from a zero-shot score near 0 (the base model knows the concept, not the format).
    The floor sits below the measured learnability (letter 77-83 on 200 samples, count 72-74); the
    issue's target is 80. One family is enough for what this proves (the same code path for every
    format); count, position and letter are learned in the benchmark test, position also through
    the worker (test_worker.py) and the app (test_conflicts_e2e.py)."""
    from llaca.learn.evaluate import adapter_applied
    from llaca.learn.tuner import TuneConfig, tune

    test = heldout(family, 100, seed=99, size=(64, 128))
    before = evaluate(tiny.model, tiny.processor, test).accuracy
    with tempfile.TemporaryDirectory() as work:
        tune(tiny.model, tiny.processor, heldout(family, 48, seed=11), TuneConfig(method="seq"), out_dir=Path(work) / "a")
        with adapter_applied(tiny.model, Path(work) / "a") as model:
            after = evaluate(model, tiny.processor, test).accuracy
    assert before < 30 and after >= floor, (family, before, after)

"""The real-LLaVA-1.5 path, structurally: a tiny random model with llava-1.5-7b-hf's settings.

336 px images, patch 14, `vision_feature_layer=-2`, `vision_feature_select_strategy="default"`,
`<image>` at id 32000 and llava-hf's own chat template. It is saved and loaded through
`llaca.model.llava.load_model`, exactly like `--model llava-hf/llava-1.5-7b-hf`, then prompt
rendering, image-token expansion (576 tokens) and streamed generation are checked.
"""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from llaca.model.llava import GenerationParams, load_model, stream_answer
from tests.llava15_model import make_llava15
from tests.stop_probe import decoding_steps


@pytest.fixture(scope="module")
def llava15_dir(tmp_path_factory):
    return make_llava15(tmp_path_factory.mktemp("llava15"))


def test_loads_through_the_same_path_and_renders_llava15(llava15_dir):
    lm = load_model(llava15_dir, device="cpu")
    cfg = lm.model.config
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert lm.dtype == torch.float32  # fp32 on CPU
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}]
    prompt = lm.processor.apply_chat_template(conv, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    inputs = lm.processor(images=Image.new("RGB", (640, 480), "red"), text=prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == 32000).sum()) == 576  # (336/14)^2 patches, CLS dropped
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
    assert inputs["input_ids"][0, 0].item() == 1  # BOS
    with torch.no_grad():
        feats = lm.model.get_image_features(pixel_values=inputs["pixel_values"])
    feats = feats if torch.is_tensor(feats) else getattr(feats, "pooler_output", feats)
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    assert feats.reshape(-1, feats.shape[-1]).shape[0] == 576


def test_streams_and_stops_like_the_real_model(llava15_dir):
    lm = load_model(llava15_dir, device="cpu")
    image = Image.new("RGB", (336, 336), "blue")
    chunks = list(stream_answer(lm, [("What is shown in this image?", None)], image,
                                GenerationParams(temperature=0.0, max_new_tokens=8)))
    assert chunks and isinstance(chunks[-1], str)
    stop = threading.Event()
    with decoding_steps(lm.model, stop) as steps:
        for _ in stream_answer(lm, [("What is shown in this image?", None)], image,
                               GenerationParams(temperature=0.0, max_new_tokens=200), stop=stop):
            stop.set()
    assert stop.is_set(), "the model produced no text to stop on"
    assert steps["after_stop"] <= 1, steps
    assert steps["total"] < 200, steps  # it did not run to max_new_tokens

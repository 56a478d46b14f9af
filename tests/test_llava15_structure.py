"""The real-LLaVA-1.5 path, structurally: a tiny random model with llava-1.5-7b-hf's settings.

336 px images, patch 14, `vision_feature_layer=-2`, `vision_feature_select_strategy="default"`,
`<image>` at id 32000 and llava-hf's own chat template. It is saved and loaded through
`llaca.model.load_model`, exactly like `--model llava-hf/llava-1.5-7b-hf`, then prompt
rendering, image-token expansion (576 tokens) and streamed generation are checked.
"""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from llaca.model import GenerationParams, load_model, stream_answer
from tests.stop_probe import decoding_steps

# llava-hf/llava-1.5-7b-hf's chat template (images first, then text; "ASSISTANT:" prompt).
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llava15_dir(tmp_path_factory):
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(32000 - 3)]
    vocab = {w: i for i, w in enumerate(words)}
    for i, w in enumerate(["USER", "ASSISTANT", ":", "What", "is", "shown", "in", "this", "image", "?", "red"]):
        vocab.pop(words[3 + i])
        vocab[w] = 3 + i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(["<image>", "<pad>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )
    assert hf_tok.convert_tokens_to_ids("<image>") == 32000
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=hf_tok, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_HF_TEMPLATE, image_token="<image>",
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=3, num_attention_heads=2, projection_dim=32),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                bos_token_id=1, eos_token_id=2, pad_token_id=32001),
        image_token_index=32000, image_seq_length=576, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    out = tmp_path_factory.mktemp("llava15")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


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

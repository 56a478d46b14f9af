"""A randomly initialised LLaVA-1.5 with llava-1.5-7b-hf's real geometry, built on a device in seconds.

For benchmarks that must measure the real model's memory and speed where its weights cannot be
downloaded (an accelerator without network): the same modules, shapes and settings as
`llava-hf/llava-1.5-7b-hf`, random weights, and a matching processor.

- `scale="full"`: CLIP ViT-L/14-336 (hidden 1024, MLP 4096, 24 layers, 16 heads), features of
  layer -2 with the "default" strategy (CLS dropped: 576 image tokens), a 2-layer GELU projector
  1024 -> 4096 -> 4096, and Llama-2-7B (hidden 4096, MLP 11008, 32 layers, 32 heads, 32 KV
  heads, 4096 positions), vocabulary 32064: 7.06 B parameters.
- `scale="small"`: the same structure and settings (336 px, patch 14, 576 image tokens, layer
  -2, GELU projector, Llama) with narrow, shallow layers: 9.05 M parameters, seconds on a laptop CPU.

The model is created directly on its device in its dtype (`torch.device` context +
`_from_config(dtype=...)`): a full-scale model never exists on the CPU. Weights get
transformers' own initialisation (normal, std `initializer_range` = 0.02, as llava-hf's
config says), which keeps the logits of the 32-layer model well within bf16's range.

The processor is llava-hf's (CLIP image processing to 336 px, `<image>` at id 32000, `<pad>`
32001, left padding, llava-hf's chat template) with a word-level tokenizer in place of
Llama's SentencePiece one (the real vocabulary cannot be downloaded either): one id per
whitespace/punctuation-separated word, unknown words -> `<unk>`. Prompts therefore have
different lengths from the real tokenizer's, but the image's 576 tokens dominate them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llaca.model.llava import LoadedModel, resolve_device, resolve_dtype

SCALES = ("full", "small")

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

VOCAB_SIZE = 32064  # llava-1.5-7b-hf's embedding rows (the tokenizer's 32002 padded to a multiple of 64)
IMAGE_TOKEN_ID = 32000
PAD_TOKEN_ID = 32001
IMAGE_SIZE = 336
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576: the CLS token is dropped ("default" strategy)

# (vision: hidden, MLP, layers, heads), (text: hidden, MLP, layers, heads, KV heads)
GEOMETRY = {
    "full": {"vision": (1024, 4096, 24, 16), "text": (4096, 11008, 32, 32, 32)},
    "small": {"vision": (64, 256, 3, 2), "text": (128, 344, 3, 4, 4)},
}

# A few words the tokenizer knows as themselves (the rest of its vocabulary is w0, w1, ...).
KNOWN_WORDS = ("USER", "ASSISTANT", ":", "What", "is", "shown", "in", "this", "image", "?", "red")


def llava15_tokenizer():
    """A word-level fast tokenizer laid out like llava-1.5's: <unk> 0, <s> 1, </s> 2, words up to
    31999, `<image>` 32000, `<pad>` 32001; BOS prepended; left padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(IMAGE_TOKEN_ID - 3)]
    vocab = {w: i for i, w in enumerate(words)}
    for i, w in enumerate(KNOWN_WORDS):
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
    assert hf_tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    assert hf_tok.pad_token_id == PAD_TOKEN_ID
    return hf_tok


def llava15_processor():
    """llava-hf's LlavaProcessor for 1.5 (CLIP preprocessing at 336 px, 576 image tokens, its chat
    template) around `llava15_tokenizer()`; the PIL image processor (no torchvision needed)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=llava15_tokenizer(), patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_HF_TEMPLATE,
        image_token="<image>",
    )


def llava15_config(scale: str = "full", init_std: float = 0.02):
    """The LlavaConfig of llava-1.5-7b-hf (`scale="full"`) or of its narrow, shallow twin ("small")."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if scale not in GEOMETRY:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    v_hidden, v_mlp, v_layers, v_heads = GEOMETRY[scale]["vision"]
    hidden, mlp, layers, heads, kv = GEOMETRY[scale]["text"]
    vision = CLIPVisionConfig(
        hidden_size=v_hidden, intermediate_size=v_mlp, num_hidden_layers=v_layers, num_attention_heads=v_heads,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=768 if scale == "full" else v_hidden,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, initializer_range=init_std,
    )
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=False, initializer_range=init_std,
        bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN_ID,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID, image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        multimodal_projector_bias=True, pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False,
    )


def random_llava15(scale: str = "full", device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, seed: int = 0, init_std: float = 0.02) -> LoadedModel:
    """A random LLaVA-1.5 (`scale` "full" or "small") built on `device` (default: cuda if
    available) in `dtype` (default: bf16 on GPU, fp32 on CPU), in eval mode, and its processor."""
    from transformers import LlavaForConditionalGeneration

    dev = resolve_device(str(device) if device is not None else None)
    dt = resolve_dtype(dev, dtype)
    config = llava15_config(scale, init_std)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(dev):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dt)
    model.eval()
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    name = f"random-llava-1.5-7b-geometry ({scale})" if scale == "full" else f"random-llava-1.5 ({scale})"
    return LoadedModel(model, llava15_processor(), name, dev, dt)


def save_random_llava15(out: Path, scale: str = "small", seed: int = 0) -> Path:
    """Save a random LLaVA-1.5 (fp32, CPU) and its processor to `out`, loadable with `load_model(out)`."""
    lm = random_llava15(scale, device="cpu", dtype=torch.float32, seed=seed)
    out = Path(out)
    lm.model.save_pretrained(out)
    lm.processor.save_pretrained(out)
    return out

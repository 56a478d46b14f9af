"""Loading any LLaVA (hub id or local folder) and answering a conversation, streamed and stoppable.

One code path for `llava-hf/llava-1.5-7b-hf` and the embedded `models/llava-tiny`:
`LlavaForConditionalGeneration` + `AutoProcessor`, bf16 on CUDA (spread over GPUs by
accelerate's `device_map="auto"` when there are several), fp32 on CPU. Generation runs in
a thread feeding a `TextIteratorStreamer`; a `threading.Event` checked by a stopping
criterion really stops it (the streamer alone cannot be cancelled).
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    LlavaForConditionalGeneration,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from llaca.config.settings import DEFAULT_MODEL
from llaca.model.chat import messages_for

log = logging.getLogger(__name__)

# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a model
# (every training run and every evaluation with an adapter), which repeated this FutureWarning in
# the app's log; nothing in this project calls it, and there is nothing for a user to change.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

REAL_MODEL = "llava-hf/llava-1.5-7b-hf"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says which and what to do."""


class GenerationParamsError(ValueError):
    """Generation settings out of range."""


class PromptTooLongError(ValueError):
    """The question (plus image tokens) does not fit the model's context."""


@dataclass(frozen=True)
class GenerationParams:
    """LLaVA demo defaults: temperature 0.2, top-p 0.7, 512 new tokens. Temperature 0 = greedy."""

    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise GenerationParamsError(f"temperature must be between 0 and 2, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationParamsError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 1 <= int(self.max_new_tokens) <= 4096:
            raise GenerationParamsError(f"max new tokens must be between 1 and 4096, got {self.max_new_tokens}")

    def generate_kwargs(self) -> dict:
        if self.temperature <= 1e-4:
            return {"do_sample": False, "max_new_tokens": int(self.max_new_tokens)}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": int(self.max_new_tokens)}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: LlavaForConditionalGeneration
    processor: object
    name: str
    device: torch.device
    dtype: torch.dtype

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config.text_config, "max_position_embeddings", 4096))


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}[str(dtype)]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use bf16, fp16 or fp32") from None


def _get_weights(name: str) -> str:
    return (
        f"To serve {name} without network, download it once where there is network (`hf download {name}` fills "
        f"the Hugging Face cache; copy the cache here, or set HF_HOME to it), then start with HF_HUB_OFFLINE=1. "
        f"Or leave out --model to serve the embedded {DEFAULT_MODEL}."
    )


def hub_cache_only(name: str, *, endpoint: str | None = None, cache_dir: str | Path | None = None,
                   offline: bool | None = None, timeout: float = 3.0) -> bool:
    """Whether the hub model ``name`` must be loaded from the local Hugging Face cache only.

    Decided in seconds, before any download is tried (an unreachable hub otherwise costs
    minutes of retries): with ``HF_HUB_OFFLINE=1``, or when the hub does not answer within
    ``timeout``, the model must be in the cache (its config at least; missing weights then
    fail at once, with the same advice). Raises ``ModelLoadError`` saying what to do.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    endpoint = endpoint or constants.ENDPOINT
    offline = constants.HF_HUB_OFFLINE if offline is None else offline
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    cached = isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache), str)
    if offline:
        if not cached:
            raise ModelLoadError(
                f"{name!r} is neither a local folder nor in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE=1 "
                f"forbids downloading it. {_get_weights(name)}"
            )
        return True
    import httpx

    try:
        httpx.head(endpoint, timeout=timeout)
        return False  # any answer will do: the hub is reachable, from_pretrained downloads what is missing
    except httpx.HTTPError as e:
        unreachable = f"the Hugging Face hub ({endpoint}) did not answer within {timeout:g} s ({type(e).__name__})"
    if cached:
        log.warning("%s; loading %s from the cache (%s)", unreachable, name, cache)
        return True
    raise ModelLoadError(
        f"could not load {name!r}: it is neither a local folder nor in the Hugging Face cache ({cache}), and "
        f"{unreachable}. {_get_weights(name)}"
    )


def load_model(name_or_path: str | Path = DEFAULT_MODEL, device: str | None = None, dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a LLaVA model and its processor from a local folder or a Hugging Face hub id."""
    name = str(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    is_local = Path(name).exists()
    if not is_local and name.startswith((".", "/", "~")):
        raise ModelLoadError(f"no model folder at {name!r} (and it is not a hub id like {REAL_MODEL})")
    cache_only = False if is_local else hub_cache_only(name)
    kwargs: dict = {"dtype": dt}
    multi_gpu = dev.type == "cuda" and device in (None, "", "auto") and torch.cuda.device_count() > 1
    if multi_gpu:
        kwargs["device_map"] = "auto"  # accelerate spreads the layers over the GPUs
    try:
        processor = AutoProcessor.from_pretrained(name, local_files_only=cache_only)
        model = LlavaForConditionalGeneration.from_pretrained(name, local_files_only=cache_only, **kwargs)
    except (OSError, ValueError) as e:
        advice = "" if is_local else f" {_get_weights(name)}"
        raise ModelLoadError(f"could not load LLaVA model {name!r} as a {'folder' if is_local else 'hub id'}: {e}{advice}") from e
    if not multi_gpu:
        model.to(dev)
    model.eval()
    tok = processor.tokenizer
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    log.info("loaded %s on %s (%s), %.1f M parameters", name, dev, dt, sum(p.numel() for p in model.parameters()) / 1e6)
    return LoadedModel(model, processor, name, dev, dt)


class EventStop(StoppingCriteria):
    """Stops generation as soon as the event is set (checked after every new token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def build_inputs(lm: LoadedModel, turns: Sequence[tuple[str, str | None]], image: Image.Image, max_new_tokens: int):
    """Processor inputs for a conversation whose last turn awaits an answer.

    Older turns are dropped (the image moves to the first kept turn) when the prompt and the
    answer would not fit the model's context; a single question that cannot fit is an error.
    """
    turns = list(turns)
    while True:
        prompt = lm.processor.apply_chat_template(messages_for(turns), add_generation_prompt=True)
        inputs = lm.processor(images=image, text=prompt, return_tensors="pt")
        length = inputs["input_ids"].shape[1]
        if length + max_new_tokens <= lm.max_positions:
            break
        if len(turns) == 1:
            if length >= lm.max_positions:
                raise PromptTooLongError(
                    f"the question is too long for this model: {length} tokens with the image, the limit is {lm.max_positions}"
                )
            max_new_tokens = lm.max_positions - length
            break
        turns = turns[1:]
    inputs = inputs.to(lm.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(lm.dtype)
    return inputs, max_new_tokens


def stream_answer(
    lm: LoadedModel,
    turns: Sequence[tuple[str, str | None]],
    image: Image.Image,
    params: GenerationParams = GenerationParams(),
    stop: threading.Event | None = None,
    threads: int | None = None,
) -> Iterator[str]:
    """Yield the answer text so far (cumulative) as tokens arrive. Setting `stop` ends it early.

    Closing the iterator early also stops the generation thread, so an abandoned request
    frees the model at once. `threads` sets the generation thread's torch CPU threads (so
    chat and an in-process learning worker can each keep to their own cores).
    """
    stop = stop or threading.Event()
    inputs, max_new = build_inputs(lm, turns, image, params.max_new_tokens)
    streamer = TextIteratorStreamer(lm.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                lm.model.generate(
                    **inputs, **{**params.generate_kwargs(), "max_new_tokens": max_new}, streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([EventStop(stop)]),
                )
        except BaseException as e:  # surfaced to the consumer below
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=run, name="llava-generate", daemon=True)
    thread.start()
    text = ""
    try:
        for piece in streamer:
            if piece:
                text += piece
                yield text
    finally:
        stop.set()
        thread.join(timeout=60)
    if failure:
        raise failure[0]


def answer(lm: LoadedModel, turns, image: Image.Image, params: GenerationParams = GenerationParams(temperature=0.0)) -> str:
    """The whole answer at once (greedy by default)."""
    text = ""
    for text in stream_answer(lm, turns, image, params):
        pass
    return text.strip()

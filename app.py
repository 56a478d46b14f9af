"""Entry point of LLaCA Studio (also the Hugging Face Space's `app_file`).

Until the Gradio app lands, this answers one question about one image from the command line
with the embedded tiny model (or any LLaVA given with --model):

    python app.py --image cat.png --question "What color is the shape?"
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from PIL import Image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("LLACA_MODEL", "models/llava-tiny"))
    ap.add_argument("--device", default=os.environ.get("LLACA_DEVICE"))
    ap.add_argument("--image", help="image file; default: a generated example from the synthetic world")
    ap.add_argument("--question", default="What color is the shape?")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from llaca.model import GenerationParams, load_model, stream_answer

    if args.image:
        image = Image.open(args.image).convert("RGB")
    else:
        from llaca.world.families import generate

        image = generate("color", 1, seed=7)[0].image
    lm = load_model(args.model, device=args.device)
    text = ""
    for text in stream_answer(lm, [(args.question, None)], image, GenerationParams(temperature=0.0, max_new_tokens=64)):
        pass
    print(text.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

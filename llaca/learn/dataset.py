"""The project's one dataset format: LLaVA training folders (`data.json` + `images/`).

`data.json` is a list of `{"id", "image": "images/x.png", "conversations": [{"from": "human",
"value": "<image>\\n{question}"}, {"from": "gpt", "value": "{answer}"}, ...]}`. The benchmark,
the tuner, the worker, the store's export and the tests all read and write it through here.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

IMAGE_TAG = "<image>"


class DatasetFormatError(ValueError):
    """A LLaVA-format folder or record that cannot be read; the message says where and why."""


@dataclass
class VQASample:
    """One image with one or more (question, answer) turns; `task` names the family/dataset."""

    id: str
    image: Image.Image
    turns: list[tuple[str, str]]
    task: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def question(self) -> str:
        return self.turns[0][0]

    @property
    def answer(self) -> str:
        return self.turns[0][1]


def to_record(sample: VQASample, image_rel: str) -> dict:
    """The LLaVA-format JSON record of a sample whose image is stored at `image_rel`."""
    conv = []
    for k, (q, a) in enumerate(sample.turns):
        conv.append({"from": "human", "value": f"{IMAGE_TAG}\n{q}" if k == 0 else q})
        conv.append({"from": "gpt", "value": a})
    rec = {"id": sample.id, "image": image_rel, "conversations": conv}
    if sample.task:
        rec["task"] = sample.task
    return rec


def write_folder(samples: Iterable[VQASample], out: Path) -> Path:
    """Write samples as a LLaVA-format folder; `data.json` is written last, atomically.

    Ids name the image files, so a repeated id is refused: before anything is written when
    `samples` is a sequence, and before `data.json` is written when it is a lazy iterable."""
    out = Path(out)
    if isinstance(samples, Sequence):
        _check_unique_ids([s.id for s in samples])
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, seen = [], set()
    for s in samples:
        _check_unique_ids([s.id], seen)
        seen.add(s.id)
        rel = f"images/{s.id}.png"
        s.image.save(out / rel)
        records.append(to_record(s, rel))
    tmp = out / "data.json.tmp"
    tmp.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    os.replace(tmp, out / "data.json")
    return out / "data.json"


def _check_unique_ids(ids: list[str], seen: set[str] = frozenset()) -> None:
    """DatasetFormatError naming the ids that repeat within `ids` or are already in `seen`."""
    repeated = sorted(i for i, k in Counter(ids).items() if k > 1 or i in seen)
    if repeated:
        raise DatasetFormatError("sample ids must be unique within a folder (they name the image files); "
                                 f"repeated: {', '.join(repeated[:5])}")


def parse_conversations(conv: list, where: str) -> list[tuple[str, str]]:
    """(question, answer) turns from a LLaVA `conversations` list; the `<image>` tag is removed."""
    if not isinstance(conv, list) or len(conv) < 2:
        raise DatasetFormatError(f"{where}: 'conversations' must be a list of human/gpt turns")
    turns = []
    for k in range(0, len(conv) - 1, 2):
        h, g = conv[k], conv[k + 1]
        if not (isinstance(h, dict) and isinstance(g, dict)) or h.get("from") != "human" or g.get("from") != "gpt":
            raise DatasetFormatError(f"{where}: turn {k // 2} must be a 'human' message followed by a 'gpt' one")
        q = str(h.get("value", "")).replace(IMAGE_TAG, "").strip()
        turns.append((q, str(g.get("value", "")).strip()))
    return turns


def read_folder(folder: Path, task: str | None = None, limit: int | None = None) -> list[VQASample]:
    """Read a LLaVA-format folder (or a path to its JSON file). Images are loaded as RGB."""
    path = Path(folder)
    data_file = path if path.is_file() else path / "data.json"
    root = data_file.parent
    if not data_file.exists():
        raise DatasetFormatError(f"{data_file} not found: a LLaVA-format folder holds data.json and its images")
    try:
        records = json.loads(data_file.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{data_file} is not valid JSON: {e}") from e
    if not isinstance(records, list):
        raise DatasetFormatError(f"{data_file} must hold a JSON list of records")
    name = task or root.name
    samples = []
    for n, rec in enumerate(records[:limit] if limit else records):
        where = f"{data_file} record {n}"
        if not isinstance(rec, dict) or "image" not in rec:
            raise DatasetFormatError(f"{where}: needs an 'image' path (text-only records are not supported)")
        img_path = root / rec["image"]
        try:
            with Image.open(img_path) as im:
                image = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise DatasetFormatError(f"{where}: cannot read image {img_path}: {e}") from e
        turns = parse_conversations(rec.get("conversations"), where)
        samples.append(VQASample(str(rec.get("id", n)), image, turns, rec.get("task", name)))
    return samples

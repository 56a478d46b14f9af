"""The flooding guest of `benchmarks/flood.py`: client A, run in its own (low-priority) process.

Its images, its long questions and junk corrections, and `flood_process`, which floods `/ask`
and `/correct` from several sessions at one address for the flood's duration and writes what
was accepted and refused (with the first message of each refusal) to a JSON file.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from pathlib import Path

LONG_TEXT = ("Describe this picture in great detail: every object, its colour, its shape, where it is, how big "
             "it is, what is next to it, and then say it all again in other words. ")
GREY = (225, 225, 225)

def circle_image(path: Path, rng: random.Random) -> str:
    """A coloured circle on a light grey 64 px canvas; returns the colour's name."""
    from PIL import Image, ImageDraw

    from llaca.world.palette import COLORS

    name = rng.choice(sorted(COLORS))
    img = Image.new("RGB", (64, 64), GREY)
    r = rng.randint(10, 20)
    x, y = rng.randint(r + 2, 61 - r), rng.randint(r + 2, 61 - r)
    ImageDraw.Draw(img).ellipse((x - r, y - r, x + r, y + r), fill=COLORS[name])
    img.save(path)
    return name


def junk_image(path: Path, rng: random.Random) -> None:
    """A new image every time: a few random rectangles (distinct bytes, so a new stored image)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), tuple(rng.randint(180, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.randint(0, 50), rng.randint(0, 50)
        d.rectangle((x0, y0, x0 + rng.randint(4, 14), y0 + rng.randint(4, 14)),
                    fill=tuple(rng.randint(0, 255) for _ in range(3)))
    img.save(path)


def long_question(chars: int) -> str:
    return (LONG_TEXT * (chars // len(LONG_TEXT) + 1))[:chars]


# --- client A: the flood (its own process) -----------------------------------------------------

def classify_error(e: BaseException) -> tuple[str, str]:
    """(outcome, key): a quota refusal names its LLACA_* variable; anything else failed."""
    msg = str(e)
    m = re.search(r"\((LLACA_[A-Z_]+)\)", msg)
    if m:
        return "refused", m.group(1)
    return ("failed", "app error") if type(e).__name__ == "AppError" else ("error", type(e).__name__)


def flood_process(url: str, cfg: dict, out_path: str) -> None:
    """Client A: `cfg["threads"]` sessions flood /ask + /correct until cfg["end"]; probes on the side."""
    import resource
    from collections import Counter

    from gradio_client import Client, handle_file

    if cfg["nice"]:
        os.nice(cfg["nice"])
    work = Path(cfg["work"])
    lock = threading.Lock()
    counts: Counter = Counter()  # (kind, outcome) -> n
    first: dict[str, str] = {}  # "kind: key" -> first message
    calls: list[dict] = []  # every call: t, kind, outcome, key, session
    probes: list[dict] = []
    question = long_question(cfg["question_chars"])

    def call(kind: str, session: str, fn):
        t0 = time.time()
        try:
            result, outcome, key, msg = fn(), "accepted", "", ""
        except Exception as e:  # noqa: BLE001 - every refusal and failure is counted
            result, (outcome, key), msg = None, classify_error(e), str(e)
        with lock:
            counts[(kind, outcome)] += 1
            if outcome != "accepted":
                first.setdefault(f"{kind}: {key}", msg)
            calls.append({"t": t0, "dt": time.time() - t0, "kind": kind, "outcome": outcome, "key": key,
                          "session": session})
        return outcome == "accepted", result, msg

    def client(address: str) -> Client:
        return Client(url, verbose=False, headers={"X-Forwarded-For": address})

    def image(tag: str, rng: random.Random) -> str:
        path = work / f"a-{tag}-{uuid.uuid4().hex[:8]}.png"
        junk_image(path, rng)
        return str(path)

    def junk(rng: random.Random) -> str:
        words = ["zebra", "lorem", "banana", "purple!", "nonsense", "42", "qwerty", "flood", "spam", "xyzzy"]
        return f"JUNK {uuid.uuid4().hex} " + " ".join(rng.choice(words) for _ in range(40))

    def flooder(k: int) -> None:
        rng, name = random.Random(cfg["seed"] + k), f"A{k + 1}"
        c = client(cfg["address"])
        answered: list[str] = []
        while time.time() < cfg["start"]:
            time.sleep(0.01)
        while time.time() < cfg["end"]:
            img = image(name, rng)
            ok, r, _ = call("ask", name, lambda img=img: c.predict(handle_file(img), question, 0.0, 0.7,
                                                                   cfg["max_new_tokens"], api_name="/ask"))
            os.unlink(img)
            if ok:
                answered.append(r[1])
            if answered and time.time() < cfg["end"]:  # a junk correction of the new (or last) answer
                mid = answered[-1]
                call("correct", name, lambda mid=mid: c.predict(mid, junk(rng), api_name="/correct"))

    def probe(label: str, c: Client, q: str, max_new: int, expect: str, session: str) -> None:
        rng = random.Random(hash(label))
        img = image("probe", rng)
        t0 = time.time()
        ok, r, msg = call("ask", session, lambda: c.predict(handle_file(img), q, 0.0, 0.7, max_new, api_name="/ask"))
        probes.append({"probe": label, "t": t0 - cfg["start"], "accepted": ok, "expected": expect,
                       "message": msg if not ok else f"answered: {r[0]!r}"})

    def prober() -> None:
        c = client(cfg["address"])
        while time.time() < cfg["start"]:
            time.sleep(0.01)
        probe("question of 2,000 characters", c, long_question(2000), cfg["max_new_tokens"],
              "refused or failed (too long for the tiny model's 512-token context)", "P")
        probe(f"max_new_tokens {cfg['max_new_tokens'] + 1}", c, "Describe the image.", cfg["max_new_tokens"] + 1,
              "refused (LLACA_MAX_NEW_TOKENS)", "P")
        # new sessions at A's address, once A's question quota is spent
        deadline = cfg["start"] + min(30.0, (cfg["end"] - cfg["start"]) / 2)
        while time.time() < deadline:
            with lock:
                if counts[("ask", "refused")] >= 3:
                    break
            time.sleep(0.2)
        for i in range(cfg["extra_sessions"]):
            probe(f"new session {i + 1} at A's address", client(cfg["address"]), "Describe the image.", 64,
                  "refused (LLACA_QUESTIONS_PER_MINUTE, counted per address)", f"N{i + 1}")
        if cfg["forged_address"]:
            # a client can put anything in the header; the proxy appends the address it really saw
            forged = f"{cfg['forged_address']}, {cfg['address']}"
            probe(f"new session with a forged X-Forwarded-For: {forged}", client(forged),
                  "Describe the image.", 64, "refused (the proxy's own, last entry counts)", "F")

    threads = [threading.Thread(target=flooder, args=(k,), daemon=True) for k in range(cfg["threads"])]
    threads.append(threading.Thread(target=prober, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, cfg["end"] - time.time() + 120))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    Path(out_path).write_text(json.dumps({
        "counts": {f"{k} {o}": n for (k, o), n in sorted(counts.items())},
        "first_messages": first, "calls": calls, "probes": probes,
        "cpu_s": ru.ru_utime + ru.ru_stime,
    }))

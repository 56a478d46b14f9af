"""Regenerate docs/chat.png and docs/dashboard.png from a real run of the learning loop.

Starts the real app (tiny model, background learning worker, temporary data dir) on
127.0.0.1 and drives it in headless Chromium like a user: for each task family the base
model has not learned (count, then position) it asks about fresh synthetic images, corrects
every wrong answer (thumbs-down + "Correct this answer", or an edit in place), waits for the
worker to train, guard and promote the new adapter, then asks again. Nothing is staged:
the numbers on the dashboard are the worker's own. Takes a few minutes on a CPU.

    python docs/screenshots.py [--per-task 16] [--out docs]

The UI shows emoji (the title, "This session's buffer", Stop, Regenerate, Clear): Chromium
draws them only with a colour emoji font, so the set-up first makes sure one is installed
(Debian's `fonts-noto-color-emoji`, installed with apt-get when missing and run as root;
otherwise the script stops and says how), instead of shooting empty boxes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

EMOJI_FONT_PACKAGE = "fonts-noto-color-emoji"
THUMBS_DOWN = "#llaca-chat button[aria-label='Dislike'], #llaca-chat button[aria-label='Disliked']"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def ensure_emoji_font() -> None:
    """A colour emoji font for Chromium, installed from Debian's packages if it is missing."""
    import shutil
    import subprocess

    def installed() -> bool:
        fonts = subprocess.run(["fc-list"], capture_output=True, text=True).stdout if shutil.which("fc-list") else ""
        return "emoji" in fonts.lower()

    if installed():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print(f"installing {EMOJI_FONT_PACKAGE} (the UI's emoji would be empty boxes without it)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", EMOJI_FONT_PACKAGE], check=True)
        subprocess.run(["fc-cache", "-f"], check=False)
    if not installed():
        raise SystemExit(f"no colour emoji font: install one first (Debian: apt-get install {EMOJI_FONT_PACKAGE})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-task", type=int, default=16, help="corrections per task (the buffer size)")
    ap.add_argument("--families", default="count,position")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)

    ensure_emoji_font()
    from playwright.sync_api import expect, sync_playwright

    from app.server import AppServer
    from llaca.world.families import generate

    work = Path(tempfile.mkdtemp(prefix="llaca-screens-"))
    n = args.per_task
    with AppServer("models/llava-tiny", work / "data", args=["--buffer-size", str(n)], worker=True,
                   log_path=work / "app.log", env={"LLACA_ADMIN_PASSWORD": "screenshots"}) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(server.url, wait_until="load")
        page.wait_for_selector("#llaca-box textarea")
        bots = page.locator("#llaca-chat [data-testid='bot']")

        def ask(question: str, image: Path) -> str:
            k = bots.count()
            page.set_input_files("#llaca-box input[type=file]", str(image))
            page.wait_for_selector("#llaca-box img")
            page.locator("#llaca-box textarea").fill(question)
            page.locator("#llaca-box textarea").press("Enter")
            expect(bots.nth(k)).to_be_visible()
            expect(bots.nth(k)).not_to_contain_text("▌", timeout=60_000)
            # the answer's feedback buttons are on the page before we click any
            expect(page.locator(THUMBS_DOWN)).to_have_count(k + 1)
            return bots.nth(k).inner_text().strip()

        def clear() -> None:
            page.get_by_role("button", name="🗑️ Clear").click()
            page.wait_for_timeout(500)

        corrected = 0
        for round_no, family in enumerate(args.families.split(","), start=1):
            items = generate(family, n + 1, seed=2026 + round_no, size=128)
            in_buffer = 0
            for k, item in enumerate(items[:n]):
                image = work / f"{family}{k}.png"
                item.image.save(image)
                question, truth = item.turns[0]
                if k % 4 == 0:
                    clear()
                answer = ask(question, image)
                if answer == truth:
                    page.get_by_role("button", name="Like", exact=True).last.click()
                    continue
                if k % 2:  # edit the answer in place
                    bots.last.hover()
                    page.locator("#llaca-chat").get_by_role("button", name="Edit").last.click()
                    page.locator("#llaca-chat textarea").first.fill(truth)
                    page.locator("#llaca-chat").get_by_role("button", name="Submit").click()
                else:  # thumbs-down, then "Correct this answer"
                    page.get_by_role("button", name="Dislike", exact=True).last.click()
                    page.locator("#llaca-correction textarea").fill(truth)
                    page.locator("#llaca-save").click()
                corrected += 1
                in_buffer += 1
                expect(page.locator("#llaca-ack")).to_contain_text(f"Saved: {in_buffer} correction")
            page.wait_for_timeout(1000)
            if "collecting" in page.locator("#llaca-panel").inner_text():
                page.locator("#llaca-teach").click()
            started = time.time()
            while time.time() - started < 900:
                head = page.locator("#llaca-panel .llaca-buffer-head").first.inner_text()
                if "promoted as" in head or "rejected" in head:
                    break
                time.sleep(2)
            print(f"{family}: {head}")
            clear()
            ask(question, work / f"{family}{n - 1}.png")  # a repeated question
            image = work / f"{family}-new.png"
            items[n].image.save(image)
            answer = ask(items[n].turns[0][0], image)
            print(f"{family}: after learning, a new image: {answer!r} (right: {items[n].turns[0][1]!r})")

        page.wait_for_timeout(3000)
        page.add_style_tag(content="[data-testid='toast-body'] {display: none !important}")
        args.out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out / "chat.png"), full_page=True)
        page.get_by_role("tab", name="Learning dashboard").click()
        page.wait_for_timeout(3000)  # the tab's own (visitor's) refresh lands first
        page.locator("#llaca-admin-password input").fill("screenshots")  # the admin's view: group names, review
        page.get_by_role("button", name="Unlock admin views").click()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
        browser.close()
    print(f"{corrected} corrections; wrote {args.out / 'chat.png'} and {args.out / 'dashboard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The real page in headless Chromium (Playwright, the system browser): upload an image, ask,
see the streamed answer, thumbs-down, submit a correction, see the buffer panel update; then
the learning dashboard and an admin rollback.

Runs ``python app.py`` on 127.0.0.1 and a free port with a temporary data dir; screenshots
land in the test's tmp dir (docs/*.png come from a real learning run: docs/screenshots.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import TINY

CHROMIUM = Path(os.environ.get("LLACA_CHROMIUM", "/usr/bin/chromium"))
MODEL = Path(os.environ.get("LLACA_TEST_MODEL", TINY))
PASSWORD = "browser-test-pw"
COLOR_Q = "What color is the shape?"
SHAPE_Q = "What shape is this?"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason=f"no Chromium at {CHROMIUM} (install it: apt-get install -y chromium); in CI this test must run",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.server import AppServer

    root = tmp_path_factory.mktemp("app-browser")
    with AppServer(MODEL, root / "data", env={"LLACA_ADMIN_PASSWORD": PASSWORD}, log_path=root / "app.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield open_page(browser, server.url)
        browser.close()


def open_page(browser, url: str):
    """A new tab (a new Gradio session) on the app, with greedy answers."""
    from playwright.sync_api import expect

    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(30_000)
    pg.goto(url, wait_until="load")
    pg.wait_for_selector("#llaca-box textarea")
    pg.get_by_text("Parameters").click()  # greedy answers, so the test knows what to expect
    temperature = pg.locator("#llaca-temperature input[type=number]")
    temperature.wait_for(state="visible")
    for _ in range(3):  # a page still hydrating can put the default back over the first fill
        temperature.fill("0")
        temperature.press("Tab")
        try:
            expect(temperature).to_have_value("0", timeout=3_000)
            break
        except AssertionError:
            continue
    expect(temperature).to_have_value("0")
    expect(pg.locator("#llaca-temperature input[type=range]")).to_have_value("0")
    return pg


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A one-shape image (the base model knows colours) and a several-shapes image (it has
    not learned to count yet: the answer to correct), with the true answers."""
    from llaca.world.families import generate

    folder = tmp_path_factory.mktemp("img")
    shape = generate("color", 1, seed=31, size=128)[0]
    count = generate("count", 1, seed=8, size=128)[0]
    shape.image.save(folder / "shape.png")
    count.image.save(folder / "count.png")
    return (folder / "shape.png", shape.scene.objects[0].color), (folder / "count.png", count.turns[0])


def screenshot(page, name: str, tmp: Path) -> None:
    page.add_style_tag(content="[data-testid='toast-body'] {display: none !important}")  # no notifications on top
    page.screenshot(path=str(tmp / name), full_page=True)


def bot_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("#llaca-chat [data-testid='bot']").all_inner_texts()]


def ask(page, question: str, image: Path | None = None) -> None:
    if image is not None:
        page.set_input_files("#llaca-box input[type=file]", str(image))
        page.wait_for_selector("#llaca-box img")
    page.locator("#llaca-box textarea").fill(question)
    page.locator("#llaca-box textarea").press("Enter")


def test_ask_thumbs_down_correct_and_see_the_buffer(page, server, images, tmp_path):
    from playwright.sync_api import expect

    from feedback_store import FeedbackStore

    (shape_png, color), (count_png, (count_q, count)) = images
    bots = page.locator("#llaca-chat [data-testid='bot']")
    # record every text the answer bubbles show, to see the answer stream in
    page.evaluate("""() => { window.__seen = [];
        new MutationObserver(() => document.querySelectorAll('#llaca-chat [data-testid="bot"]').forEach(
            b => window.__seen.push(b.innerText))).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
    ask(page, COLOR_Q, shape_png)
    expect(bots.first).to_have_text(color)  # the right answer
    seen = page.evaluate("window.__seen")
    assert any("▌" in s for s in seen), seen  # it arrived as a stream (cursor while generating)

    # a new image starts a new conversation; the base model has not learned to count
    ask(page, count_q, count_png)
    expect(bots.nth(1)).to_be_visible()
    expect(bots.nth(1)).not_to_contain_text("▌", timeout=20_000)
    thumbs_down = "#llaca-chat button[aria-label='Dislike'], #llaca-chat button[aria-label='Disliked']"
    expect(page.locator(thumbs_down)).to_have_count(2)  # the new answer's buttons are there too
    answer = bot_texts(page)[1]
    assert bot_texts(page)[0] == color and answer not in ("", "…")
    fix = count if answer != count else f"{count} shapes"

    # 👎 on that answer, then type the right one: two clicks and the answer
    page.get_by_role("button", name="Dislike", exact=True).last.click()
    expect(page.locator("#llaca-selection")).to_contain_text("Answer #2")
    expect(page.locator("#llaca-ack")).to_contain_text("marked as wrong")
    page.locator("#llaca-correction textarea").fill(fix)
    page.locator("#llaca-save").click()
    expect(page.locator("#llaca-ack")).to_contain_text("Saved: 1 correction in this session's buffer")
    panel = page.locator("#llaca-panel")
    expect(panel).to_contain_text(count_q)
    expect(panel).to_contain_text(fix)
    expect(panel).to_contain_text("collecting (1/8")
    expect(panel).to_contain_text("#2 base")  # the version that answered
    assert panel.locator("img").count() == 1  # the image's thumbnail
    # the model's answer stays visible, struck through, with the correction after it
    expect(bots.nth(1)).to_contain_text(f"Correction: {fix}")
    expect(bots.nth(1).locator("del").first).to_contain_text(answer.splitlines()[0].strip())
    screenshot(page, "chat.png", tmp_path)

    session = panel.locator("[data-session]").get_attribute("data-session")
    store = FeedbackStore(server.data_dir)
    try:
        fb = [(f.kind, f.corrected_text, f.previous_text) for f in store.session_feedback(session)]
        [item] = store.session_buffers(session)[0].items
        count_image = [m.image_sha256 for m in store.session_history(session) if m.text == count_q]
    finally:
        store.close()
    assert fb == [("dislike", None, None), ("correction", fix, answer)]
    assert (item.question, item.answer, [item.image_sha256]) == (count_q, fix, count_image)


def test_teach_now_and_the_learning_status(page):
    from playwright.sync_api import expect

    page.locator("#llaca-teach").click()
    expect(page.locator("#llaca-ack")).to_contain_text("ready and queued for learning")
    expect(page.locator("#llaca-panel")).to_contain_text("queued for learning")


def test_dashboard_and_admin_rollback(page, server, tmp_path):
    from playwright.sync_api import expect

    from feedback_store import FeedbackStore
    from tests.test_app_live import make_adapter
    from tests.worker_helpers import metrics_record

    store = FeedbackStore(server.data_dir)
    try:
        # two real (untrained) adapters, with metrics in the learning worker's format (fixture numbers)
        tasks = ["color", "shape", "buffer 1", "buffer 2"]
        rows = [[100.0, 82.0, 10.0, 5.0], [100.0, 81.0, 90.0, 8.0], [99.0, 81.0, 88.0, 92.0]]
        for k, (version, parent) in enumerate([("v1", None), ("v2", "v1")], start=1):
            make_adapter(server.data_dir / "adapters" / version)
            matrix = [r[: k + 2] for r in rows[: k + 1]]
            record = metrics_record(k, tasks[: k + 2], matrix, ["base", "v1", "v2"][: k + 1],
                                    reason="no task dropped more than 5 points")
            store.register_adapter(version, parent, server.data_dir / "adapters" / version, "llaca", metrics=record)
            store.promote_adapter(version)
    finally:
        store.close()
    page.get_by_role("tab", name="Learning dashboard").click()
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#llaca-adapters")).to_contain_text("v2")
    expect(page.locator("#llaca-dash-summary")).to_contain_text("current: v2")
    expect(page.locator("#llaca-matrix img")).to_be_visible()
    expect(page.locator("#llaca-forgetting img")).to_be_visible()
    screenshot(page, "dashboard.png", tmp_path)

    # rollback needs the admin password
    page.get_by_label("Serve this version").click()
    page.get_by_role("option", name="v1", exact=True).click()
    page.get_by_label("Admin password").fill("wrong")
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#llaca-rollback-msg")).to_contain_text("Wrong admin password")
    page.get_by_label("Admin password").fill(PASSWORD)
    page.get_by_role("button", name="Roll back").click()
    expect(page.locator("#llaca-rollback-msg")).to_contain_text("Rolled back: v1 is current")
    expect(page.locator("#llaca-dash-summary")).to_contain_text("current: v1")


def test_the_correction_box_is_tied_to_the_answer_shown_as_selected(page, server, images):
    """Text typed for one answer can never be saved against another: choosing another answer
    (👎 or a click) empties the box, and a refused save says why in the panel, not only in a toast."""
    from playwright.sync_api import expect

    from feedback_store import FeedbackStore

    (shape_png, color), _ = images
    pg = open_page(page.context.browser, server.url)  # a fresh session
    try:
        bots = pg.locator("#llaca-chat [data-testid='bot']")
        ask(pg, COLOR_Q, shape_png)
        expect(bots.first).to_have_text(color)
        ask(pg, SHAPE_Q)  # a follow-up about the same image
        expect(bots.nth(1)).to_be_visible()
        expect(bots.nth(1)).not_to_contain_text("▌", timeout=20_000)
        second = bot_texts(pg)[1]
        box, selection, ack = pg.locator("#llaca-correction textarea"), pg.locator("#llaca-selection"), pg.locator("#llaca-ack")

        # 👎 on answer 1 and type a correction for it ...
        pg.locator("#llaca-chat button[aria-label='Dislike']").first.click()
        expect(selection).to_contain_text("Answer #1")
        box.fill("typed for answer one")
        # ... then 👎 on answer 2: the box is emptied, so that text cannot go to answer 2
        pg.locator("#llaca-chat button[aria-label='Dislike']").last.click()
        expect(selection).to_contain_text("Answer #2")
        expect(box).to_have_value("")
        box.fill("typed for answer two")
        bots.first.click()  # selecting answer 1 by a click empties it too
        expect(selection).to_contain_text("Answer #1")
        expect(box).to_have_value("")
        pg.locator("#llaca-save").click()
        expect(ack).to_contain_text("Not saved: Type the right answer to answer #1 first.")

        # a refused save stays explained in the panel (the toast is gone) and keeps the text
        bots.nth(1).click()
        expect(selection).to_contain_text("Answer #2")
        box.fill(second)
        pg.locator("#llaca-save").click()
        expect(ack).to_contain_text("Not saved: The corrected answer is the same as the original answer")
        pg.wait_for_timeout(6_000)
        expect(ack).to_contain_text("Not saved:")
        expect(box).to_have_value(second)

        fix = "hexagon"
        box.fill(fix)
        pg.locator("#llaca-save").click()
        expect(ack).to_contain_text("Answer #2 corrected. Saved: 1 correction")
        expect(bots.nth(1)).to_contain_text(f"Correction: {fix}")  # and the model's answer, struck through
        expect(bots.nth(1).locator("del").first).to_contain_text(second.splitlines()[0].strip())
        expect(bots.first).to_have_text(color)
        session = pg.locator("#llaca-panel [data-session]").get_attribute("data-session")
    finally:
        pg.close()
    store = FeedbackStore(server.data_dir)
    try:
        history = store.session_history(session)
        [buffer] = store.session_buffers(session)
    finally:
        store.close()
    answers = [m for m in history if m.role == "assistant"]
    assert [(i.message_id, i.question, i.answer) for i in buffer.items] == [(answers[1].id, SHAPE_Q, fix)]

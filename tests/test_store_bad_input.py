"""Feedback store: every kind of bad input raises its specific error and writes nothing."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from feedback_store import (
    FeedbackStore,
    ImageTooLargeError,
    InvalidCorrectionError,
    InvalidEncodingError,
    InvalidImageError,
    InvalidParamsError,
    InvalidQuestionError,
    MessageNotFoundError,
    SessionNotFoundError,
)
from tests.store_helpers import ask, image_files, png_bytes, row_counts


def noisy_png(size: int = 64) -> bytes:
    rnd = random.Random(size)
    image = Image.frombytes("RGB", (size, size), bytes(rnd.getrandbits(8) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size but carries two rows of pixels (a bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def one_bit_png(width: int, height: int) -> bytes:
    """A complete, valid image of width x height pixels that compresses to a few kB."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def corrupted(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 100]) + data[middle + 100 :]


BAD_IMAGES = {
    "not_an_image": (b"%PDF-1.7 this is a document, not a picture", InvalidImageError, "unsupported", "not a PNG, JPEG"),
    "empty_file": (b"", InvalidImageError, "empty", "empty"),
    "truncated_png": (noisy_png()[: int(len(noisy_png()) * 0.6)], InvalidImageError, "incomplete", "damaged or incomplete"),
    "corrupt_png": (corrupted(noisy_png()), InvalidImageError, None, "damaged"),
    "unsupported_tiff": (None, InvalidImageError, "unsupported", "not a PNG, JPEG, WebP, GIF or BMP image"),
    "upload_50_mb": (b"\x89PNG\r\n\x1a\n" + bytes(50_000_000), ImageTooLargeError, "too_large", "50.0 MB; the limit is 20.0 MB"),
    "bomb_48_megapixels": (one_bit_png(8000, 6000), ImageTooLargeError, "too_large", r"48 megapixels \(8000x6000\); the limit is 40 megapixels"),
    "bomb_header_81_megapixels": (png_header_only(9000, 9000), ImageTooLargeError, "too_large", "81 megapixels"),
    "bomb_over_pillow_global_limit": (png_header_only(20000, 20000), ImageTooLargeError, "too_large", "limit is 40 megapixels"),
}


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_refused_and_nothing_is_written(store, case):
    data, error, reason, message = BAD_IMAGES[case]
    if data is None:
        data = _tiff()
    session = store.start_session()
    before, files = row_counts(store), image_files(store)
    with pytest.raises(error, match=message) as info:
        store.record_user_message(session.id, "What is in this picture?", image_bytes=data)
    assert info.value.reason == reason or (reason is None and info.value.reason in ("damaged", "incomplete"))
    if error is ImageTooLargeError:
        assert info.value.limit == (20_000_000 if info.value.unit == "bytes" else 40_000_000)
    assert row_counts(store) == before
    assert image_files(store) == files == []


def test_pixel_limit_is_a_constructor_argument_not_pillows_global(tmp_path):
    original = Image.MAX_IMAGE_PIXELS
    small = FeedbackStore(tmp_path / "d", max_image_pixels=10_000, max_image_bytes=50_000)
    try:
        s = small.start_session()
        assert small.record_user_message(s.id, "ok", image_bytes=png_bytes(size=(100, 100))).image_sha256
        with pytest.raises(ImageTooLargeError, match=r"10,100 pixels \(101x100\); the limit is 10,000 pixels") as big:
            small.record_user_message(s.id, "too big", image_bytes=png_bytes(size=(101, 100)))
        assert (big.value.size, big.value.limit, big.value.width, big.value.height) == (10_100, 10_000, 101, 100)
        with pytest.raises(ImageTooLargeError, match="0.1 MB"):
            small.record_user_message(s.id, "too heavy", image_bytes=noisy_png(150))
        assert Image.MAX_IMAGE_PIXELS == original
        assert row_counts(small)["messages"] == 1
    finally:
        small.close()


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("", InvalidQuestionError, "the question is empty"),
        ("   \n\t ", InvalidQuestionError, "the question is empty"),
        ("\x00\x00", InvalidQuestionError, "the question is empty"),
        ("x" * 100_000, InvalidQuestionError, "100,000 characters long; the limit is 4,000"),
        (b"caf\xe9 au lait?", InvalidEncodingError, "not valid UTF-8"),
        (b"\xff\xfe\x00", InvalidEncodingError, "not valid UTF-8"),
        ("broken \udc80 surrogate", InvalidEncodingError, "not valid Unicode"),
        (None, InvalidQuestionError, "the question is empty"),
    ],
)
def test_bad_question_is_refused_and_nothing_is_written(store, text, error, message):
    session = store.start_session()
    before = row_counts(store)
    with pytest.raises(error, match=message) as info:
        store.record_user_message(session.id, text, image_bytes=png_bytes())
    assert info.value.field == "question"
    assert info.value.problem == ("encoding" if error is InvalidEncodingError else "too_long" if len(text or "") > 4000 else "empty")
    assert row_counts(store) == before
    assert image_files(store) == []


def test_question_at_the_limit_is_accepted(store):
    s = store.start_session()
    assert len(store.record_user_message(s.id, "q" * 4000).text) == 4000
    assert store.record_user_message(s.id, "caf\xe9".encode("utf-8")).text == "caf\xe9"


def test_unknown_session_writes_no_image(store):
    with pytest.raises(SessionNotFoundError, match="no session 'no-such-session'") as missing:
        store.record_user_message("no-such-session", "hello?", image_bytes=png_bytes())
    assert missing.value.session_id == "no-such-session"
    assert image_files(store) == []


def test_bad_corrections_are_refused_and_nothing_is_written(store):
    alice, bob = store.start_session(), store.start_session()
    _, answer = ask(store, alice, "What colour?", "red", image=png_bytes())
    before = row_counts(store)
    cases = [
        ("00000000-0000-0000-0000-000000000000", "blue", MessageNotFoundError, "no such message in this session", None),
        (answer.id, "blue", MessageNotFoundError, "no such message in this session", None),  # bob's view
        (answer.id, "", InvalidCorrectionError, "corrected answer is empty", "empty"),
        (answer.id, "y" * 100_000, InvalidCorrectionError, "limit is 16,000", "too_long"),
        (answer.id, "  red ", InvalidCorrectionError, "same as the original answer", "unchanged"),
        (answer.id, b"\xc3\x28", InvalidEncodingError, "not valid UTF-8", "encoding"),
    ]
    for message_id, text, error, message, problem in cases:
        session = bob if error is MessageNotFoundError else alice
        with pytest.raises(error, match=message) as info:
            store.add_correction(session.id, message_id, text)
        assert getattr(info.value, "problem", None) == problem
    assert row_counts(store) == before


def test_unserialisable_generation_params_are_refused(store):
    s = store.start_session()
    q = store.record_user_message(s.id, "What colour?")
    before = row_counts(store)
    for params in ({"stop": object()}, {"stop": {b"bytes"}}, ["not", "a", "dict"]):
        with pytest.raises(InvalidParamsError, match="generation parameters") as info:
            store.record_answer(s.id, q.id, "red", None, params)
        assert info.value.field == "generation parameters"
    assert row_counts(store) == before
    # JSON has no NaN: stored as null rather than refusing the answer
    a = store.record_answer(s.id, q.id, "red", None, {"temperature": float("nan"), "top": [1.0, float("inf")]})
    assert store.get_message(s.id, a.id).gen_params == {"temperature": None, "top": [1.0, None]}


def test_store_messages_state_facts_not_what_to_do():
    """Advice for people ("Please ...", "Reload the page", "try again") is the app's job
    (``app/errors.py``); the store's messages state what is wrong. The CLI may advise on its flags."""
    import re
    from pathlib import Path

    import feedback_store

    ui = re.compile(r"please|click|reload|try again|upload a|choose |👍|👎", re.IGNORECASE)
    for path in Path(feedback_store.__file__).parent.glob("*.py"):
        if path.name != "cli.py":
            strings = re.findall(r'f?"[^"\n]*"', path.read_text(encoding="utf-8"))
            assert [t for t in strings if ui.search(t)] == [], path.name

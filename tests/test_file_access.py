"""Uploaded images can't be read back from Gradio's file cache by anyone who only guesses or
derives the path (``app/file_access.py``).

Gradio caches an upload at ``<GRADIO_TEMP_DIR>/<sha256(install seed + bytes)>/<name>`` and,
left alone, serves it at ``/gradio_api/file=<path>`` to any request. The app hands the
uploader a second, random path (``llaca-<128 bits>/<name>``) and serves only that one (and
the app's own cached examples) from the temp dir. Runs ``python app.py`` on 127.0.0.1 with
its own ``GRADIO_TEMP_DIR``; every "other client" here is a plain ``urllib`` request with no
cookie and no session.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COLOR_Q = "What color is the shape?"
PRIVATE = re.compile(r"^llaca-[0-9a-f]{32}$")


def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def file_url(base: str, path: str | Path, route: str = "gradio_api/file=") -> str:
    return base + route + urllib.parse.quote(str(path))


def upload(base: str, name: str, data: bytes) -> list[str]:
    """``POST /gradio_api/upload`` as the browser does it (multipart, field ``files``)."""
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    req = urllib.request.Request(base + "gradio_api/upload", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def derived_path(temp_dir: Path, name: str, data: bytes) -> Path:
    """Where Gradio's own rule puts an upload: a hash of the install's seed and the bytes."""
    from gradio.processing_utils import hash_bytes

    return temp_dir / hash_bytes(data) / name


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app.server import AppServer

    root = tmp_path_factory.mktemp("file-access")
    temp_dir = root / "gradio-tmp"
    temp_dir.mkdir()
    stray = temp_dir / "tmpotherprogram"  # what another program left in the shared temp dir
    stray.write_bytes(b"not yours")
    with AppServer(TINY, root / "data", env={"GRADIO_TEMP_DIR": str(temp_dir)}, log_path=root / "app.log") as srv:
        yield srv, temp_dir.resolve(), stray.resolve()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from llaca.world.families import generate

    path = tmp_path_factory.mktemp("img") / "private_shape.png"
    generate("color", 1, seed=23, size=96)[0].image.save(path)
    return path


@pytest.fixture(scope="module")
def asked(app, image):
    """Client A asks about ``image`` through the API: Gradio caches the upload."""
    from gradio_client import Client, handle_file

    srv, temp_dir, _ = app
    answer, message_id, _version = Client(srv.url, verbose=False).predict(
        handle_file(str(image)), COLOR_Q, 0.0, 0.7, 16, api_name="/ask")
    assert answer and message_id
    return sorted(temp_dir.glob(f"*/{image.name}"))


def test_a_derived_or_guessed_path_gives_no_bytes(app, image, asked):
    srv, temp_dir, stray = app
    data = image.read_bytes()
    derived = derived_path(temp_dir, image.name, data)
    # Gradio's content-derived copy is on disk...
    assert derived in asked and derived.read_bytes() == data
    # ...but no request without the secret gets it, by any route or spelling of the path
    traversal = f"{temp_dir}/llaca-{'0' * 32}/../{derived.parent.name}/{derived.name}"
    for url in (file_url(srv.url, derived), file_url(srv.url, derived, "gradio_api/file/"),
                file_url(srv.url, traversal), file_url(srv.url, derived.parent / "image.png")):
        for method in ("GET", "HEAD"):
            status, body = get(url, method)
            assert status == 403 and data not in body, (url, method, status)
    # the uploader's copy lives under a random name only it was told
    private = [p for p in asked if PRIVATE.match(p.parent.name)]
    assert len(private) == 1 and private[0].read_bytes() == data, asked
    # nor does anything else in the temp dir that the app did not hand out
    assert get(file_url(srv.url, stray))[0] == 403
    assert get(file_url(srv.url, temp_dir / "deep_links" / "x" / "state.json"))[0] == 403


def test_uploading_the_same_image_reveals_nothing(app, image, asked):
    """Client B has the same bytes and name: its upload gets its own random path, not A's, and
    not the content-derived directory (which would tell B where A's file is)."""
    srv, temp_dir, _ = app
    data = image.read_bytes()
    (theirs,) = upload(srv.url, image.name, data)
    theirs = Path(theirs)
    assert PRIVATE.match(theirs.parent.name) and theirs.parent.parent.resolve() == temp_dir
    assert theirs not in asked and theirs.parent != derived_path(temp_dir, image.name, data).parent
    assert get(file_url(srv.url, theirs)) == (200, data)  # B's own URL works for B


def test_the_uploader_sees_the_image_in_the_chat(app, image):
    """The browser flow, spoken over HTTP: upload, submit the chat box (Gradio's queue), and
    load the image URL the chatbot shows. It is the private path, and it answers."""
    srv, _, _ = app
    data = image.read_bytes()
    (path,) = upload(srv.url, image.name, data)
    urls = chat_image_urls(srv.url, {"path": path, "orig_name": image.name, "size": len(data),
                                     "mime_type": "image/png", "meta": {"_type": "gradio.FileData"}})
    assert urls and all(PRIVATE.match(Path(urllib.parse.unquote(u.split("file=", 1)[1])).parent.name) for u in urls)
    status, body = get(urls[0])
    assert status == 200 and body == data


def test_examples_still_show_and_the_data_dir_stays_closed(app):
    srv, temp_dir, _ = app
    with urllib.request.urlopen(srv.url + "config", timeout=30) as r:
        config = r.read().decode()
    cached = sorted({p for p in re.findall(r'"path":\s*"([^"]+\.png)"', config) if Path(p).is_relative_to(temp_dir)})
    assert cached, "the examples are cached in the temp dir"
    for p in cached:  # the example thumbnails (and an example clicked into the chat)
        status, body = get(file_url(srv.url, p))
        assert status == 200 and body == Path(p).read_bytes(), p
    examples = sorted((srv.data_dir / "examples").glob("*.png"))
    assert examples and get(file_url(srv.url, examples[0].absolute()))[0] == 200  # allowed_paths
    stored = sorted((srv.data_dir / "images").glob("*"))
    assert stored, "the app stored the asked image"
    assert get(file_url(srv.url, stored[0].absolute()))[0] == 403
    assert get(file_url(srv.url, (srv.data_dir / "store.db").absolute()))[0] == 403


def chat_image_urls(base: str, file_data: dict) -> list[str]:
    """Submit the multimodal box as the page does (``/gradio_api/queue/join``, then the
    session's event stream) and return the file URLs of the chatbot's final value."""
    with urllib.request.urlopen(base + "config", timeout=30) as r:
        config = json.loads(r.read())
    box = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "llaca-box")
    fn_index, dep = next((i, d) for i, d in enumerate(config["dependencies"])
                         if any(t[0] == box and t[1] == "submit" for t in d["targets"]))
    session = uuid.uuid4().hex[:11]
    # inputs: box, chatbot, state, temperature, top_p, max tokens
    payload = {"data": [{"text": COLOR_Q, "files": [file_data]}, [], None, 0.0, 0.7, 16], "event_data": None,
               "fn_index": dep.get("id", fn_index), "trigger_id": box, "session_hash": session}
    req = urllib.request.Request(base + "gradio_api/queue/join", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
    with urllib.request.urlopen(base + f"gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for line in stream:
            if not line.startswith(b"data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_completed":
                assert msg.get("success", True), msg
                chat = msg["output"]["data"][1]
                chat = chat.get("value", chat) if isinstance(chat, dict) else chat
                return [part["file"]["url"] for m in chat if m["role"] == "user"
                        for part in m["content"] if isinstance(part, dict) and part.get("type") == "file"]
    raise AssertionError("the chat event did not complete")

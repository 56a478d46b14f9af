"""Who may read a file from Gradio's upload cache over HTTP (``/gradio_api/file=<path>``).

Gradio (6.31) stores an upload at ``<GRADIO_TEMP_DIR>/<sha256(install seed + bytes)>/<client
file name>`` and serves every file under ``GRADIO_TEMP_DIR`` to anyone who asks: no session,
no cookie, no secret. The directory name is derived from the image's content, and
``/gradio_api/upload`` tells anyone who uploads the same bytes which directory that is, so
whoever has (or guesses) an image can check whether someone else uploaded it and read
it back; anyone who sees a URL once can read it forever. Files of other programs in the
shared temp dir (other Gradio apps, ``gradio_client`` downloads) are served too.

:class:`UploadAccessMiddleware` (an ASGI middleware passed to ``demo.launch`` through
``app_kwargs``) makes the URL of an upload a capability:

* ``POST /gradio_api/upload``: each uploaded file is also linked to
  ``<temp dir>/llaca-<128 random bits>/<name>``, and the response names that path instead
  of the content-derived one. The uploader's browser (preview, chat bubble) and
  ``gradio_client`` only ever see and use the random path; Gradio keeps files that are
  already in its cache where they are, so the chat shows that same URL.
* ``GET/HEAD /gradio_api/file=<path>`` (and ``/gradio_api/file/<path>``, ``/file=``) for a
  path inside the temp dir is served only if it is one of those issued random paths, or a
  file the app itself put in the cache before serving anything (the cached examples).
  Everything else there (content-derived directories, other programs' files, deep-link
  state) gets 403, whether or not it exists. Paths outside the temp dir are left to
  Gradio's own rule (``allowed_paths``/``blocked_paths``).

The random paths live in memory: after a restart the old ones answer 403 (the sessions
that showed them are gone with the restart anyway).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CAPABILITY_PREFIX = "llaca-"
# the routes that serve a local file, wherever the app is mounted
_FILE_ROUTE = re.compile(r"/(?:gradio_api/file[=/]|file=)")
_UPLOAD_ROUTE = re.compile(r"/(?:gradio_api/)?upload$")
_DENIED = b'{"detail":"File not allowed."}'


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(str(path)))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class UploadAccessMiddleware:
    """ASGI middleware: uploads get unguessable paths; the temp dir serves only those (and
    the app's own cached files)."""

    def __init__(self, app: ASGIApp, upload_dir: str | None = None) -> None:
        self.app = app
        self._upload_dir = upload_dir
        self._public: set[str] | None = None  # the app's own cached files (examples), taken once
        self.issued: set[str] = set()  # the random paths handed out by /upload (real paths)

    # -- helpers ----------------------------------------------------------------------
    def _dir(self, scope: Scope) -> str:
        if self._upload_dir is None:
            from gradio.utils import get_upload_folder

            self._upload_dir = getattr(scope.get("app"), "uploaded_file_dir", None) or get_upload_folder()
        return _real(self._upload_dir)

    def _take_public(self, scope: Scope, folder: str) -> None:
        """Snapshot, before the first request is handled, the files the app cached while it was
        built (the examples): everyone may see those."""
        public: set[str] = set()
        try:
            blocks = scope["app"].get_blocks()
            for files in blocks.temp_file_sets:
                for f in list(files):
                    p = _real(f)
                    if _inside(p, folder) and not _inside(p, os.path.join(folder, "deep_links")):
                        public.add(p)
        except Exception:  # no Gradio app in scope (a bare test app): nothing is public
            log.debug("no Gradio blocks to take the public cached files from", exc_info=True)
        self._public = public

    def allowed(self, path: str, folder: str) -> bool | None:
        """True/False for a path inside the temp dir ``folder``; None when Gradio decides."""
        p = _real(path)
        if not _inside(p, folder):
            return None
        return p in self.issued or p in (self._public or ())

    # -- ASGI -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        folder = self._dir(scope)
        if self._public is None:
            self._take_public(scope, folder)
        path: str = scope.get("path", "")
        if "file" in path:
            for m in _FILE_ROUTE.finditer(path):
                target = path[m.end():]
                if target and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", target) and self.allowed(target, folder) is False:
                    await self._deny(send)
                    return
        if scope.get("method") == "POST" and _UPLOAD_ROUTE.search(path):
            await self._upload(scope, receive, send, folder)
            return
        await self.app(scope, receive, send)

    async def _deny(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 403, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(_DENIED)).encode()),
            (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body", "body": _DENIED})

    async def _upload(self, scope: Scope, receive: Receive, send: Send, folder: str) -> None:
        """Run Gradio's upload (and its background move), then hand out random paths."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start is None:
            return
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        if start.get("status") == 200:
            try:
                body = json.dumps(self._relink(json.loads(body), folder, scope)).encode()
            except Exception:  # never hand out a content-derived path instead
                log.exception("could not give an upload a private path")
                start, body, headers = {"status": 500}, b'{"detail":"Upload failed."}', [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _relink(self, paths: Any, folder: str, scope: Scope) -> list[str]:
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"unexpected upload response: {paths!r:.200}")
        out = []
        for p in paths:
            src = _real(p)
            if not _inside(src, folder):
                raise ValueError(f"upload outside the temp dir: {p}")
            private = Path(folder) / f"{CAPABILITY_PREFIX}{secrets.token_hex(16)}"
            private.mkdir(mode=0o700)
            dest = private / Path(src).name
            try:
                os.link(src, dest)  # a second name for the same bytes; the original stays (and is denied)
            except OSError:
                shutil.copyfile(src, dest)
            self.issued.add(_real(dest))
            out.append(str(dest))
        try:  # Gradio's own record of uploads (what `delete_cache` cleans up)
            scope["app"].get_blocks().upload_file_set.update(out)
        except Exception:
            log.debug("could not record the private upload paths with Gradio", exc_info=True)
        return out


def middleware() -> Any:
    """The ``Middleware`` entry for ``demo.launch(app_kwargs={"middleware": [...]})``."""
    from starlette.middleware import Middleware

    return Middleware(UploadAccessMiddleware)

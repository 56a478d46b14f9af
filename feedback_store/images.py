"""Image validation, normalisation and content-addressed, crash-safe file writes.

An upload is checked in this order, cheapest first, and nothing is written unless
every check passes:

1. byte size against ``max_bytes`` (a 50 MB upload is refused before decoding);
2. the header is parsed by Pillow restricted to ``ALLOWED_FORMATS``;
3. the pixel count from the header against ``max_pixels`` - our own explicit
   decompression-bomb limit, checked before any pixel is decoded (Pillow's global
   ``Image.MAX_IMAGE_PIXELS`` is left alone; if it fires first it is reported the same way);
4. the pixels are decoded in full (a truncated or corrupt file fails here).

The image is then normalised: EXIF orientation applied, first frame only, converted to
RGB (transparency composited on white), re-encoded as PNG without metadata (which also
drops EXIF/GPS data). The SHA-256 of those PNG bytes names the file:
``images/<sha256>.png`` under the data dir. Files are written tmp + fsync + rename +
directory fsync, so a crash leaves either no file or a complete one (plus perhaps a
``.tmp-*`` file that ``FeedbackStore.cleanup_orphans`` removes).
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
IMAGES_DIR = "images"
TMP_PREFIX = ".tmp-"
_SUPPORTED = "PNG, JPEG, WebP, GIF or BMP"


@dataclass(frozen=True)
class PreparedImage:
    """A validated, normalised image ready to be written."""

    sha256: str
    data: bytes
    width: int
    height: int
    source_format: str
    format: str = "PNG"

    @property
    def relative_path(self) -> str:
        return image_relative_path(self.sha256)


def image_relative_path(sha256: str) -> str:
    """Where an image lives, relative to the data dir (also its path in exports)."""
    return f"{IMAGES_DIR}/{sha256}.png"


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def _mp(n: int) -> str:
    if n < 1_000_000:
        return f"{n:,} pixels"
    return f"{n / 1_000_000:.1f}".rstrip("0").rstrip(".") + " megapixels"


def prepare_image(data: bytes, *, max_bytes: int, max_pixels: int) -> PreparedImage:
    """Validate and normalise uploaded image bytes, or raise ``InvalidImageError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError(f"The image must be file bytes, not {type(data).__name__}.")
    data = bytes(data)
    if not data:
        raise InvalidImageError("The uploaded image file is empty (0 bytes). Choose the file again.")
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"The image file is {_mb(len(data))}; the limit is {_mb(max_bytes)}. "
            "Save it smaller (for example as JPEG, or resized) and try again."
        )
    too_many = (
        "The image is {mp} ({w}x{h}); the limit is {limit}. Resize it and try again."
    )
    try:
        image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"The image has far too many pixels; the limit is {_mp(max_pixels)}. "
            "Resize it and try again."
        ) from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"This file is not an image that can be read. Upload a {_SUPPORTED} image."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(
            f"The image file is damaged ({exc}). Open and re-save it, or upload another image."
        ) from None
    with image:
        width, height = image.size
        source_format = image.format or "unknown"
        if width <= 0 or height <= 0:
            raise InvalidImageError("The image has no pixels (zero width or height). Upload another image.")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                too_many.format(w=width, h=height, mp=_mp(width * height), limit=_mp(max_pixels))
            )
        try:
            image.seek(0)
            image.load()
            normalised = _normalise(image)
        except Image.DecompressionBombError:
            raise ImageTooLargeError(
                f"The image has too many pixels; the limit is {_mp(max_pixels)}. Resize it and try again."
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise InvalidImageError(
                "The image file is damaged or incomplete (for example a cut-off upload): "
                f"{exc}. Upload the complete file again."
            ) from None
    out = io.BytesIO()
    normalised.save(out, format="PNG", compress_level=6)
    png = out.getvalue()
    return PreparedImage(
        sha256=hashlib.sha256(png).hexdigest(), data=png, width=normalised.width,
        height=normalised.height, source_format=source_format,
    )


def _normalise(image: Image.Image) -> Image.Image:
    """EXIF-orient and convert to plain RGB (alpha composited on white)."""
    oriented = ImageOps.exif_transpose(image) or image
    if oriented.mode in ("RGBA", "LA", "PA") or (oriented.mode == "P" and "transparency" in oriented.info):
        rgba = oriented.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        result = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        result = oriented.convert("RGB")  # always a new image object
    result.info = {}  # no EXIF, ICC profile or text chunks reach the PNG encoder
    return result


def write_image_file(data_dir: Path, prepared: PreparedImage) -> bool:
    """Write the image under ``data_dir`` unless an identical file is there.

    Returns True when a file was written. Safe against crashes at any moment and
    against other threads/processes writing the same image (same bytes, atomic rename).
    """
    final = data_dir / prepared.relative_path
    try:
        if final.stat().st_size == len(prepared.data):
            return False
    except FileNotFoundError:
        pass
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(prepared.data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)

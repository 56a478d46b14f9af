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
``images/<sha256>.png`` under the data dir, written by ``files.write_atomic``: a crash leaves
no file or a complete one (plus perhaps a ``.tmp-*`` file that ``cleanup_orphans`` removes).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError
from .files import write_atomic

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
IMAGES_DIR = "images"
SUPPORTED = "PNG, JPEG, WebP, GIF or BMP"


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
        raise InvalidImageError(f"the image must be bytes, not {type(data).__name__}", reason="not_bytes")
    data = bytes(data)
    if not data:
        raise InvalidImageError("the image file is empty (0 bytes)", reason="empty")
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"the image file is {_mb(len(data))}; the limit is {_mb(max_bytes)}",
            reason="too_large", size=len(data), limit=max_bytes, unit="bytes",
        )
    too_many = ImageTooLargeError(f"the image has too many pixels; the limit is {_mp(max_pixels)}",
                                  reason="too_large", size=None, limit=max_pixels, unit="pixels")
    try:
        image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError:
        raise too_many from None
    except UnidentifiedImageError:
        raise InvalidImageError(f"the file is not a {SUPPORTED} image", reason="unsupported") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"the image file is damaged ({exc})", reason="damaged") from None
    with image:
        width, height = image.size
        source_format = image.format or "unknown"
        if width <= 0 or height <= 0:
            raise InvalidImageError("the image has no pixels (zero width or height)", reason="no_pixels")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image is {_mp(width * height)} ({width}x{height}); the limit is {_mp(max_pixels)}",
                reason="too_large", size=width * height, limit=max_pixels, unit="pixels", width=width, height=height,
            )
        try:
            image.seek(0)
            image.load()
            normalised = _normalise(image)
        except Image.DecompressionBombError:
            raise too_many from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise InvalidImageError(f"the image file is damaged or incomplete ({exc})", reason="incomplete") from None
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
    """Write the image under ``data_dir`` unless an identical file is there; True if written.

    Safe against crashes at any moment and against other threads/processes writing the same
    image (same bytes, atomic rename)."""
    final = data_dir / prepared.relative_path
    try:
        if final.stat().st_size == len(prepared.data):
            return False
    except FileNotFoundError:
        pass
    final.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(final, prepared.data)
    return True

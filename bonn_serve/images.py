"""Decode untrusted image bytes into an RGB PIL image, or fail with a client error.

Everything a client can send goes through `decode_image`: the format is sniffed (never trusted from a file
name or content type), only the formats we serve are accepted, the pixel count is checked from the header
before any pixel is decoded (decompression-bomb guard), and every decoder failure becomes an `ImageError`
with a stable `code` the HTTP layer maps to a 4xx status.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # MPO (multi-picture JPEG) opens as JPEG's sibling
DEFAULT_MAX_PIXELS = 24_000_000  # 6000 x 4000: a large phone photo; ~72 MB as RGB

# Never hand a half-decoded image to the model: a truncated file must be an error, not grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """The bytes are not an image we can classify. `code` is machine-readable, `status` the HTTP status."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is that much larger than the
    # model needs (the DCT-domain downscale is much cheaper than a full decode followed by a resize).
    draft_to: int | None = None


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Bytes -> RGB image with EXIF orientation applied. Raises ImageError for anything unusable."""
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes)")
    # Pillow's own bomb guard raises at 2x MAX_IMAGE_PIXELS; ours below is exact. Keep Pillow's as a backstop.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        fmt, size = sniff(data)
        if fmt is None:
            raise ImageError(
                "not_an_image",
                f"the bytes are not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
            ) from None
        if size is not None and 0 in size:
            raise ImageError("zero_size_image", f"{fmt} image has zero size ({size[0]}x{size[1]})") from None
        raise ImageError("corrupt_image", f"{fmt} image with an invalid or truncated header") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image_too_large", f"image has more than {limits.max_pixels} pixels", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError("corrupt_image", f"cannot read the image header: {e}") from None

    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError("zero_size_image", f"image has zero size ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
            413,
        )
    try:
        im.seek(0)  # animated GIF / WebP: classify the first frame
        if limits.draft_to and im.format in ("JPEG", "MPO"):
            im.draft("RGB", (limits.draft_to, limits.draft_to))
        im.load()
        im = _apply_exif_orientation(im)
        return to_rgb(im)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        # Pillow reports truncation as OSError("image file is truncated ...") and bad data as SyntaxError.
        raise ImageError("corrupt_image", f"the image data is truncated or corrupt: {e}") from None
    except MemoryError:
        raise ImageError("image_too_large", "the image needs too much memory to decode", 413) from None


def header_pixels(data: bytes) -> int:
    """Pixels an upload's header declares (Pillow reads only the header); 0 if it has none Pillow can read, in
    which case decoding fails fast anyway."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb warning here is decode_image's to report
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as im:
                return int(im.size[0]) * int(im.size[1])
    except Exception:  # any unreadable header: decode_image gives the real error
        return 0


def sniff(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """Format from the magic bytes and, where the header has it at a fixed offset, (width, height).
    Only used to explain why Pillow refused a file."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", struct.unpack(">II", data[16:24]) if len(data) >= 24 else None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF", struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None
    if data.startswith(b"BM"):
        if len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return "BMP", (abs(w), abs(h))
        return "BMP", None
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG", None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", None
    return None, None


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # a malformed EXIF block must not reject an otherwise fine image
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB. Transparency is composited onto white (what a viewer shows);
    16/32-bit integer greyscale is scaled down, not clipped."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float64) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV ...

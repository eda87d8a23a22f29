"""bonn_serve.images: untrusted bytes -> RGB image, or an ImageError with a stable code and a 4xx status."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from _serving import png_header_only
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bonn_serve.images import DecodeLimits, ImageError, decode_image, header_pixels, sniff


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 24, h: int = 16) -> Image.Image:
    x = np.zeros((h, w, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, w)[None, :]
    x[..., 1] = np.linspace(0, 255, h)[:, None]
    x[..., 2] = 90
    return Image.fromarray(x, "RGB")


def expect_error(data: bytes, code: str, status: int = 400, limits: DecodeLimits | None = None) -> ImageError:
    with pytest.raises(ImageError) as ei:
        decode_image(data, limits or DecodeLimits())
    assert ei.value.code == code, ei.value.detail
    assert ei.value.status == status
    assert 400 <= ei.value.status < 500
    return ei.value


@pytest.mark.parametrize(
    "fmt,lossless", [("PNG", True), ("BMP", True), ("WEBP", False), ("JPEG", False), ("GIF", False)]
)
def test_formats_decode_to_rgb(fmt: str, lossless: bool) -> None:
    src = gradient()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(src, fmt, **kw))
    assert out.mode == "RGB" and out.size == src.size
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(src, np.int16))
    if lossless or fmt == "WEBP":
        assert diff.max() == 0
    else:
        assert diff.mean() < 12  # lossy / palette-quantised, but the same picture


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(decode_image(buf.getvalue()))
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


def test_grayscale_and_bilevel() -> None:
    grey = Image.fromarray(np.full((5, 7), 77, np.uint8), "L")
    out = np.asarray(decode_image(encode(grey, "PNG")))
    assert out.shape == (5, 7, 3) and (out == 77).all()
    one = Image.new("1", (6, 6), 1)
    assert (np.asarray(decode_image(encode(one, "PNG"))) == 255).all()


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent on the left half
    rgba[:, 2:, 3] = 255
    out = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (out[:, :2] == 255).all()
    assert (out[:, 2:] == (200, 0, 0)).all()
    la = Image.fromarray(np.dstack([np.full((3, 3), 10, np.uint8), np.zeros((3, 3), np.uint8)]), "LA")
    assert (np.asarray(decode_image(encode(la, "PNG"))) == 255).all()


def test_palette_with_transparency() -> None:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    out = np.asarray(decode_image(encode(p, "PNG")))
    assert (out == (0, 255, 0)).all()
    out_t = np.asarray(decode_image(encode(p, "PNG", transparency=0)))
    assert (out_t == 255).all()


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(decode_image(encode(cmyk, "JPEG", quality=95)), np.int16)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_16bit_greyscale_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32768, 65535]], np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    out = np.asarray(decode_image(encode(im, "PNG")))[..., 0]
    assert out.tolist() == [[0, 128, 255]]


def test_exif_orientation_applied() -> None:
    src = gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    out = decode_image(encode(src, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)
    assert decode_image(encode(src, "JPEG")).size == (40, 20)


def test_jpeg_draft_keeps_at_least_the_needed_size() -> None:
    big = gradient(640, 480)
    out = decode_image(encode(big, "JPEG"), DecodeLimits(draft_to=32))
    assert min(out.size) >= 32 and out.size[0] < 640  # decoded at a reduced scale
    assert decode_image(encode(big, "JPEG")).size == (640, 480)


# ------------------------------------------------------------------------------------------ rejections
def test_empty() -> None:
    expect_error(b"", "empty_image")


@pytest.mark.parametrize("data", [b"hello world", b"%PDF-1.4\n...", b"\x00" * 100, b"GIF89"])
def test_not_an_image(data: bytes) -> None:
    expect_error(data, "not_an_image")


def test_unsupported_format_is_rejected() -> None:
    expect_error(encode(gradient(), "TIFF"), "not_an_image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_truncated(fmt: str) -> None:
    data = encode(gradient(64, 64), fmt)
    for cut in (len(data) // 3, 2 * len(data) // 3):
        with pytest.raises(ImageError) as ei:
            decode_image(data[:cut])
        assert ei.value.code in ("corrupt_image", "not_an_image") and ei.value.status == 400


@pytest.mark.parametrize("w,h", [(0, 5), (5, 0)])
def test_zero_size(w: int, h: int) -> None:
    expect_error(png_header_only(w, h), "zero_size_image")
    gif = b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00;"
    expect_error(gif, "zero_size_image")


def test_decompression_bomb_rejected_from_header() -> None:
    # 100k x 100k would need 30 GB to decode; it must be refused from the header alone.
    expect_error(png_header_only(100_000, 100_000), "image_too_large", 413)


def test_pixel_limit_is_exact() -> None:
    data = encode(gradient(20, 10), "PNG")
    assert decode_image(data, DecodeLimits(max_pixels=200)).size == (20, 10)
    expect_error(data, "image_too_large", 413, DecodeLimits(max_pixels=199))


def test_sniff() -> None:
    assert sniff(png_header_only(3, 4)) == ("PNG", (3, 4))
    assert sniff(b"nothing")[0] is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        assert decode_image(data).mode == "RGB"
    except ImageError as e:
        assert 400 <= e.status < 500


_VALID = {fmt: encode(gradient(16, 16), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP")}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_VALID)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_corrupted_images_never_crash(fmt: str, edits: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID[fmt])
    for pos, val in edits:
        data[pos % len(data)] = val
    try:
        assert decode_image(bytes(data)).mode == "RGB"
    except ImageError as e:
        assert 400 <= e.status < 500


@pytest.mark.parametrize("size", [(1, 1_000_000), (1_000_000, 1), (3, 200_000)])
def test_extreme_aspect_ratio_never_makes_a_huge_intermediate(size, monkeypatch) -> None:
    """Resizing the whole 1 x 1,000,000 image to shorter side 32 would make 32 x 32,000,000 pixels (4 GB)."""
    from bonn_serve import preprocess as pp

    made = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize",
                        lambda self, sz, *a, **k: (made.append(sz[0] * sz[1]), real_resize(self, sz, *a, **k))[1])
    out = pp.preprocess(Image.new("RGB", size, (10, 200, 30)), {"channels": 3, "resize": 32, "crop": 32,
                                                              "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert out.shape == (1, 3, 32, 32) and made and max(made) <= pp.MAX_RESIZED_PIXELS
    np.testing.assert_allclose(out[0, :, 16, 16], np.array([10, 200, 30]) / 255.0, atol=1e-6)


def test_crop_only_resize_matches_the_full_resize(monkeypatch) -> None:
    """Past MAX_RESIZED_PIXELS only the crop's source region is resized: the same sampling as resizing the
    whole image and cropping, within Pillow's fixed-point rounding (2 grey levels)."""
    from bonn_serve import preprocess as pp

    rng = np.random.default_rng(0)
    for w, h, resize, crop in ((640, 480, 256, 224), (37, 100, 40, 32), (3000, 2000, 32, 32), (48, 48, 40, 32)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        full = np.asarray(pp.resize_center_crop(img, resize, crop), dtype=int)
        monkeypatch.setattr(pp, "MAX_RESIZED_PIXELS", 0)
        boxed = np.asarray(pp.resize_center_crop(img, resize, crop), dtype=int)
        monkeypatch.undo()
        assert boxed.shape == full.shape == (crop, crop, 3)
        assert np.abs(boxed - full).max() <= 2 and np.abs(boxed - full).mean() < 0.3


def test_header_pixels_reads_only_the_header() -> None:
    """A 24 MP one-bit PNG is ~3 KB: the pixel count, not the byte count, says it is expensive to decode."""
    buf = io.BytesIO()
    Image.new("1", (6000, 4000)).save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 10_000
    assert header_pixels(buf.getvalue()) == 24_000_000
    assert header_pixels(b"not an image") == 0

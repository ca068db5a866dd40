"""mnistkit.pixels.decode_image on what users send besides plain grey PNGs: drawings on a
transparent canvas (black or white strokes, RGBA, LA, palette) and phone photos stored sideways
with an EXIF orientation. Each must read as the same drawing on paper would."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mnistkit.pixels import decode_image


def _encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def digit(mnist):
    return mnist.test_images[0].numpy().astype(np.uint8)  # (28, 28) white on black, a 7


def _on_paper(digit: np.ndarray) -> np.ndarray:
    """The digit drawn in black on white paper, read with invert=True (the reference)."""
    return decode_image(_encode(Image.fromarray(255 - digit, "L")), invert=True).pixels


def test_black_strokes_on_a_transparent_canvas_read_as_on_paper(digit):
    for hidden in (0, 255):  # drawing apps store black or white under the transparent pixels
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., :3] = hidden
        rgba[..., :3][digit > 0] = 0  # black ink
        rgba[..., 3] = digit  # the ink's opacity is the stroke
        got = decode_image(_encode(Image.fromarray(rgba, "RGBA")), invert=True).pixels
        assert np.array_equal(got, _on_paper(digit)), hidden


def test_anti_aliased_strokes_that_fade_to_white_under_the_transparency(digit):
    """Edges half transparent and half grey (the stroke blended with the white stored beneath)."""
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = (255 - digit)[..., None]
    rgba[..., 3] = digit
    got = decode_image(_encode(Image.fromarray(rgba, "RGBA")), invert=True).pixels.astype(int)
    assert np.abs(got - _on_paper(digit).astype(int)).max() <= 128 and got[0, 0] == 0 and got[digit == 255].min() == 255


def test_white_strokes_on_a_transparent_canvas_read_as_white_on_black(digit):
    rgba = np.full((28, 28, 4), 255, np.uint8)
    rgba[..., 3] = digit
    got = decode_image(_encode(Image.fromarray(rgba, "RGBA"))).pixels
    assert np.array_equal(got, digit)


def test_grey_with_alpha_and_a_palette_with_a_transparent_colour(digit):
    la = np.stack([np.zeros_like(digit), digit], -1)
    assert np.array_equal(decode_image(_encode(Image.fromarray(la, "LA")), invert=True).pixels, _on_paper(digit))
    mask = (digit > 127).astype(np.uint8)  # 0: transparent (palette colour 0), 1: black ink
    palette = Image.fromarray(mask, "P")
    palette.putpalette([255, 255, 255, 0, 0, 0])
    got = decode_image(_encode(palette, transparency=0), invert=True).pixels
    assert np.array_equal(got, np.where(mask, 255, 0).astype(np.uint8))


def test_an_opaque_alpha_channel_changes_nothing(digit):
    rgba = np.dstack([digit, digit, digit, np.full_like(digit, 255)])
    assert np.array_equal(decode_image(_encode(Image.fromarray(rgba, "RGBA"))).pixels, digit)


def test_a_photo_stored_sideways_is_turned_upright_by_its_exif_orientation(digit):
    upright = Image.fromarray(digit, "L").resize((112, 112))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the camera stored it turned left
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    got = decode_image(_encode(stored, "JPEG", quality=100, exif=exif)).pixels.astype(int)
    want = decode_image(_encode(upright, "JPEG", quality=100)).pixels.astype(int)
    assert np.abs(got - want).max() <= 8  # JPEG's rounding; sideways, the 7 differs by far more
    assert np.abs(decode_image(_encode(stored, "JPEG", quality=100)).pixels.astype(int) - want).max() > 100


def test_a_canvas_with_a_transparent_margin_keeps_its_paper_colour(digit):
    """An opaque white canvas, black digit, in a transparent margin stored as white: the margin
    is the canvas's paper, not a frame of ink."""
    side = 40
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., :3] = 255  # what the transparent margin stores
    inner = np.full((28, 28, 3), 255, np.uint8)
    inner[digit > 0] = 0
    rgba[6:34, 6:34, :3] = inner
    rgba[6:34, 6:34, 3] = 255  # the canvas is opaque, the margin transparent
    paper = np.full((side, side), 255, np.uint8)
    paper[6:34, 6:34] = inner[..., 0]
    got = decode_image(_encode(Image.fromarray(rgba, "RGBA")), invert=True).pixels
    assert np.array_equal(got, decode_image(_encode(Image.fromarray(paper, "L")), invert=True).pixels)


def test_a_large_transparent_drawing_is_read_like_a_small_one(digit):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digit  # black strokes on a transparent canvas
    big = Image.fromarray(rgba, "RGBA").resize((2048, 2048), Image.Resampling.NEAREST)
    got = decode_image(_encode(big), invert=True).pixels.astype(int)
    assert np.abs(got - _on_paper(digit).astype(int)).mean() < 8  # resampled from 2048 px, same digit


@pytest.mark.parametrize(
    ("what", "image", "fmt"),
    [
        ("16-bit PNG", lambda d: Image.fromarray(d.astype(np.uint16) * 257), "PNG"),
        ("16-bit TIFF", lambda d: Image.fromarray(d.astype(np.uint16) * 257), "TIFF"),
        ("float TIFF, 0..1", lambda d: Image.fromarray(d.astype(np.float32) / 255), "TIFF"),
        ("float TIFF, 0..255", lambda d: Image.fromarray(d.astype(np.float32)), "TIFF"),
        ("32-bit integer TIFF", lambda d: Image.fromarray(d.astype(np.int32) * 257), "TIFF"),
    ],
)
def test_wide_greys_read_as_the_same_digit(digit, what, image, fmt):
    """Found by review: convert("L") clips 16-bit, 32-bit and float greys to 0..255, so these
    read as two greys (a confident answer for an image never seen)."""
    got = decode_image(_encode(image(digit), fmt)).pixels
    assert np.abs(got.astype(int) - digit).max() <= 1, what

"""Request payloads, image files and arrays -> validated ``(n, 28, 28)`` pixels 0..255.

The one set of input rules, numpy only (no torch): the Seldon class, the V2 runtime and
the query client all read images and arrays through here, so they accept the same shapes::

    [784]  [28, 28]  [n, 784]  [n, 28, 28]  [n, 1, 28, 28]

Raw MNIST intensities are 0..255, white digit on black. ``BadInput`` says what is wrong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SIDE",
    "PIXELS",
    "SHAPES",
    "MIN_SIDE",
    "BadInput",
    "DecodedImage",
    "as_batch",
    "batch_size_of",
    "decode_image",
    "encode_png",
    "to_pixels",
]

SIDE = 28
PIXELS = SIDE * SIDE
SHAPES = "[784], [28, 28], [n, 784], [n, 28, 28] or [n, 1, 28, 28]"
#: Smaller images cannot hold a recognisable digit; they are refused, not blown up.
MIN_SIDE = 8


class BadInput(ValueError):
    """An input mnistkit cannot read as digits; servers answer it with HTTP 400."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (28, 28) uint8, white digit on black as MNIST stores it
    resized_from: tuple[int, int] | None  # (width, height) when the image was not 28x28


def batch_size_of(shape: tuple[int, ...]) -> int | None:
    """How many images an array of ``shape`` holds under the shape rules, or None."""
    if shape in ((PIXELS,), (SIDE, SIDE)):
        return 1
    if len(shape) == 2 and shape[1] == PIXELS or len(shape) == 3 and shape[1:] == (SIDE, SIDE):
        return shape[0]
    if len(shape) == 4 and shape[1:] == (1, SIDE, SIDE):
        return shape[0]
    return None


def as_batch(values: Any, *, max_batch: int | None = None, what: str = "the request") -> np.ndarray:
    """An array of pixel numbers -> ``(n, 28, 28)`` float32, checked: numbers, finite,
    0..255, a known shape, at most ``max_batch`` images."""
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        raise BadInput(f"{what} is ragged; every image must have {PIXELS} pixels") from None
    if arr.size == 0:
        raise BadInput(f"{what} holds no pixels; send {PIXELS} values (0..255) per image")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        kind = {"U": "strings", "S": "strings", "O": "nulls, strings or mixed values"}.get(
            arr.dtype.kind, str(arr.dtype)
        )
        raise BadInput(f"pixels must be numbers 0..255, got {kind}")
    if arr.dtype.kind == "c":  # (astype would drop the imaginary parts, with only a warning)
        raise BadInput("pixels must be real numbers 0..255, got complex numbers")
    n = batch_size_of(arr.shape)
    if n is None:
        raise BadInput(f"cannot read shape {list(arr.shape)} as images: use {SHAPES}")
    if max_batch is not None and n > max_batch:
        raise BadInput(f"batch of {n} images is over the limit of {max_batch}; split the request")
    with np.errstate(over="ignore", invalid="ignore"):
        pixels = arr.astype(np.float32).reshape(n, SIDE, SIDE)
    if not np.isfinite(pixels).all():
        raise BadInput("pixels must be finite numbers 0..255; the input holds NaN, Infinity or a number too large")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0 or hi > 255:
        raise BadInput(f"pixels must lie in 0..255 (raw intensities), got values from {lo:g} to {hi:g}")
    return pixels


#: the image formats a digit comes in; Pillow's other decoders (DDS, SPIDER, ...) are not offered
#: to input from the network
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


def decode_image(
    data: bytes,
    *,
    invert: bool = False,
    name: str = "image",
    max_pixels: int | None = None,
    limit_says: str = "",
) -> DecodedImage:
    """Decode an image (``IMAGE_FORMATS``), convert it to grey and, if needed, resize it to 28x28.

    ``invert`` turns a black-on-white drawing into MNIST's white-on-black. A photo is turned
    upright by its EXIF orientation; a transparent canvas becomes the background that contrasts
    with what is drawn on it (see ``_grey``), as if the drawing had been made on paper. Images over
    ``max_pixels`` (width x height) are refused before they are decoded (a small file can
    claim a huge canvas; ``limit_says`` names the limit in the message), as are images under
    8x8. Raises ``BadInput``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                limit = limit_says or f"the limit of {max_pixels}"
                raise BadInput(f"{name} is {width}x{height} pixels, over {limit}; send a smaller image")
            if min(width, height) < MIN_SIDE:
                raise BadInput(f"{name} is {width}x{height} pixels; a digit needs at least {MIN_SIDE}x{MIN_SIDE}")
            img.load()
            grey = _grey(img)
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"{name} is not an image Pillow can read ({type(e).__name__})") from None
    except Exception as e:  # a decoder's own error on a hostile file (fuzzed: NotImplementedError, AttributeError)
        raise BadInput(f"{name} is not an image Pillow can read ({type(e).__name__})") from None
    resized = None
    if grey.size != (SIDE, SIDE):
        resized = grey.size
        grey = grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.uint8)
    if invert:
        pixels = (255 - pixels).astype(np.uint8)
    return DecodedImage(pixels=pixels, resized_from=resized)


def _grey(img: Any) -> Any:
    """An opened image, upright, in grey ("L"), its transparent pixels (whatever colour they hold:
    drawing apps store black or white there) made paper. ``convert("L")`` alone drops the alpha,
    so black strokes on a transparent canvas read as an all-black image. The paper's colour:

    * where what is opaque is a large part of the image (30 % or more) in two greys, it is paper
      and strokes (a canvas with a transparent margin): the margin takes the paper's, the commoner
      (the median grey of the opaque pixels);
    * else it is the strokes alone: the paper is white under dark strokes, black under light ones."""
    from PIL import Image, ImageOps, ImageStat

    try:
        if img.getexif().get(0x0112, 1) != 1:  # turned: a copy, upright (none made otherwise)
            img = ImageOps.exif_transpose(img)
    except Exception:  # unreadable EXIF: the pixels are still good, as stored
        pass
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _wide_grey(img)
    if img.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGBA":
        return img.convert("L")
    grey, alpha = img.convert("L"), img.getchannel("A")
    if alpha.getextrema()[0] == 255:  # an alpha channel with nothing transparent
        return grey
    scale = max(1, max(img.size) // 256)  # the statistics from at most 256 pixels a side
    small_grey, small_alpha = (grey, alpha) if scale == 1 else (grey.reduce(scale), alpha.reduce(scale))
    opaque = small_alpha.point(lambda a: 255 if a >= 128 else 0)
    if not opaque.getextrema()[1]:
        paper = 0  # nothing drawn: black, as MNIST's background
    else:
        seen = ImageStat.Stat(small_grey, mask=opaque)
        share = ImageStat.Stat(opaque).mean[0] / 255
        if share >= 0.3 and seen.stddev[0] >= 32:  # paper and strokes: the paper is the commoner
            paper = int(seen.median[0])
        else:  # strokes alone
            paper = 255 if seen.mean[0] < 128 else 0
    out = Image.new("L", img.size, paper)
    out.paste(grey, mask=alpha)
    return out


def _wide_grey(img: Any) -> Any:
    """A 16-bit, 32-bit integer or float grey image (16-bit PNG and TIFF, float TIFF) in "L".
    ``convert("L")`` clips these to 0..255, so a 16-bit digit read as two greys. Scaled by the
    range of its type: 0..65535 for 16-bit (and for 32-bit integers beyond 255), 0..1 for floats
    that stay within it; other values are taken as 0..255 and clipped."""
    from PIL import Image

    values = np.asarray(img.convert("F") if img.mode.startswith("I;16") else img, dtype=np.float32)
    top = float(np.nanmax(values)) if values.size else 0.0
    if img.mode.startswith("I;16") or (img.mode == "I" and top > 255):
        values = values * np.float32(255 / 65535)
    elif img.mode == "F" and top <= 1:
        values = values * np.float32(255)
    grey = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L")


def encode_png(pixels: np.ndarray) -> bytes:
    """(28, 28) pixels 0..255 -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def to_pixels(payload: Any, *, max_batch: int, max_image_pixels: int | None = None, invert: bool = False) -> np.ndarray:
    """A served request's input -> ``(n, 28, 28)`` float32: encoded image bytes, or an
    array of pixels. strData/jsonData (str, dict) are refused. Raises ``BadInput``."""
    if isinstance(payload, (bytes, bytearray)):
        image = decode_image(bytes(payload), invert=invert, name="the image", max_pixels=max_image_pixels)
        return image.pixels[None].astype(np.float32)
    if isinstance(payload, str):
        raise BadInput("strData is not accepted: send pixels as tensor/ndarray, or an image as binData")
    if isinstance(payload, dict):
        raise BadInput("jsonData is not accepted: send pixels as tensor/ndarray, or an image as binData")
    return as_batch(payload, max_batch=max_batch)

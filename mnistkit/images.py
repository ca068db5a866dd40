"""Image files and bytes -> 28x28 grey pixels 0..255 (numpy only, no torch).

Shared by the Seldon model class (``binData`` requests) and the query client, so both
read an image the same way.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["DecodedImage", "decode_image", "encode_png"]

log = logging.getLogger(__name__)

SIDE = 28


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (28, 28) uint8, white digit on black as MNIST stores it
    resized_from: tuple[int, int] | None  # (width, height) when the image was not 28x28


def decode_image(data: bytes, *, invert: bool = False, name: str = "image") -> DecodedImage:
    """Decode any image Pillow reads, convert it to grey and, if needed, resize to 28x28.

    ``invert`` turns a black-on-white drawing into MNIST's white-on-black. Raises
    ``ValueError`` with a readable message for bytes that are not an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            grey = img.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name} is not an image Pillow can read ({type(e).__name__})") from None
    resized = None
    if grey.size != (SIDE, SIDE):
        resized = grey.size
        grey = grey.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.uint8)
    if invert:
        pixels = (255 - pixels).astype(np.uint8)
    return DecodedImage(pixels=pixels, resized_from=resized)


def encode_png(pixels: np.ndarray) -> bytes:
    """(28, 28) uint8 -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()

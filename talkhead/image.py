"""The photo: any image file Pillow reads -> ``(H, W, 3)`` uint8 RGB, upright, size-limited.

The first stage of the data's path (``image file -> Photo``)::

    photo = even_size(limit_size(load_image(path), max_size))   # (H, W, 3) uint8, H and W even

* :func:`load_image` decodes with Pillow, applies the EXIF ``Orientation`` tag, composites alpha on
  white and converts every mode to 8-bit RGB. Pillow's decompression-bomb limit bounds what it
  decodes (too large -> :class:`~talkhead.errors.ImageError`).
* :func:`limit_size` is ``--max-size`` (longest side, never upscaled); :func:`even_size` adds one
  mirrored row/column where a side is odd (H.264 yuv420p). Pixel coordinates are kept by
  :func:`even_size`, scaled by :func:`limit_size`, so faces are found after both (the pipeline).
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np

from .errors import ImageError, InputError

__all__ = ["load_image", "limit_size", "even_size"]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as an ``(H, W, 3)`` uint8 RGB array with its EXIF orientation applied.

    Decoding is Pillow's (PNG, JPEG, WebP, BMP and the other formats Pillow reads; for animations,
    the first frame). ``PIL.ImageOps.exif_transpose`` rotates/flips the pixels as the EXIF
    ``Orientation`` tag says, so phone photos come out upright. Conversions:

    * alpha (RGBA, LA, palette with transparency): **composited on white** (transparent pixels of a
      cut-out portrait often hold arbitrary colour, usually black; white is what viewers show);
    * grayscale, bilevel, palette, CMYK, YCbCr: converted to RGB;
    * 16-bit (``I;16*``, ``I``) grayscale: scaled to 8 bits (``round(v / 257)``); float (``F``)
      images in [0, 1] are scaled by 255, others clipped to [0, 255].

    Args:
        path: the image file.

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous and writable.

    Raises:
        InputError: ``path`` does not exist or is not a regular file (the message names it).
        ImageError: the file is not an image Pillow can decode, is truncated/corrupt, or is too
            large (Pillow's decompression-bomb limit); the message names the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: '{p}'")
    if not p.is_file():
        raise InputError(f"image is not a file: '{p}'")
    try:
        with warnings.catch_warnings():
            # between Image.MAX_IMAGE_PIXELS and twice that (89-179 megapixels by default) Pillow only
            # warns, in two lines on stderr; such a photo is decoded (and downscaled later), so the
            # warning says nothing the user must act on. Above twice the limit it is refused below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb8(img)
    except UnidentifiedImageError:
        raise ImageError(f"'{p}' is not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageError(f"image '{p}' is too large to decode safely (more than {limit:,} pixels, "
                         "Pillow's decompression-bomb limit): downscale it first") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        # Pillow reports truncated/corrupt data as OSError; some plugins and malformed EXIF blocks
        # surface as SyntaxError, ValueError, struct.error or IndexError.
        raise ImageError(f"cannot decode image '{p}': {exc}") from None


def _to_rgb8(img) -> np.ndarray:
    """Any Pillow image -> ``(H, W, 3)`` uint8 RGB (alpha composited on white)."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        g = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    bands = img.getbands()
    has_alpha = "A" in bands or "a" in bands or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8, copy=True)


# ================================================================================== output size
def limit_size(image: np.ndarray, max_size: int | None) -> np.ndarray:
    """``--max-size``: downscale so the longest side is at most ``max_size`` pixels.

    Aspect ratio kept (each side rounded to the nearest pixel, at least 1), ``cv2.INTER_AREA``
    (the anti-aliased downscale). Never upscales: an image already within the limit, or
    ``max_size=None``, is returned as is (the same object).

    Args:
        image: ``(H, W, C)`` uint8.
        max_size: the longest side allowed, pixels (>= 2), or ``None`` for no limit.

    Returns:
        ``(H', W', C)`` with ``max(H', W') <= max_size``.

    Raises:
        InputError: ``max_size`` is not an integer >= 2.
    """
    import cv2

    if max_size is None:
        return image
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 2:
        raise InputError(f"--max-size must be a whole number of pixels >= 2, not {max_size!r}")
    h, w = image.shape[:2]
    if max(h, w) <= max_size:
        return image
    s = max_size / float(max(h, w))
    size = (max(1, min(max_size, round(w * s))), max(1, min(max_size, round(h * s))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def even_size(image: np.ndarray) -> np.ndarray:
    """Make both sides even (H.264 yuv420p subsamples chroma 2x2) by adding one mirrored row at the
    bottom and/or one column at the right (``cv2.BORDER_REFLECT``: a copy of the last row/column).

    Nothing is stretched or cut, and pixel coordinates are unchanged, so face boxes found on the
    input stay valid. An image with even sides is returned as is (the same object).

    Args:
        image: ``(H, W, C)`` array.

    Returns:
        ``(H + H % 2, W + W % 2, C)``.
    """
    import cv2

    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(np.ascontiguousarray(image), 0, h % 2, 0, w % 2, cv2.BORDER_REFLECT)

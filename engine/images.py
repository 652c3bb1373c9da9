"""Decoding reference images: one loader, so every image reaches the backend as it looks.

Like diffusers' ``load_image`` and HF ``datasets``, the EXIF orientation is applied. Then the
pixels become 8-bit RGB by these rules (README, "Reference datasets"):

- 16-bit grey (``I;16``, ``I;16B``...) is scaled by 1/257; 32-bit integer and float pixels are
  taken as 8-bit if they lie in [0, 255], as [0, 1] if they lie there (floats), as 16-bit if
  they lie in [0, 65535], else stretched from their minimum to their maximum;
- 1-bit, grey, palette, CMYK and YCbCr images go through Pillow's conversion;
- transparency (alpha, or a palette's transparent colour) is composited over white;
- the first frame of an animation is used.

An image that does not decode, or has more pixels than the limit (``prompts.max_image_pixels``,
against decompression bombs), raises ``ImageRejected`` with the reason.
"""

from __future__ import annotations

from __future__ import annotations

import io

__all__ = ["ImageRejected", "decode_rgb", "fit_square", "PILLOW_MAX_PIXELS"]

PILLOW_MAX_PIXELS = 89_478_485  # Pillow's own default limit: about 9459 x 9459


class ImageRejected(Exception):
    """An image dde will not use; the message says why."""


def _open(data: bytes, max_pixels: int):
    """Pillow's image, decoded, with the pixel limit checked from the header before decoding."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our limit, checked below, is the one
        try:
            image = Image.open(io.BytesIO(data))
        except Exception as e:
            raise ImageRejected(f"not an image Pillow can decode ({len(data)} bytes, starting {data[:8]!r}): "
                                f"{type(e).__name__}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageRejected(f"{image.width}x{image.height} = {pixels} pixels, over the limit of {max_pixels} "
                            f"(prompts.max_image_pixels)")
    try:
        image.load()
    except Exception as e:
        raise ImageRejected(f"{image.format} image does not decode: {type(e).__name__}: {e}") from None
    return image


def _to_8bit(image):
    """A single-channel image of more than 8 bits as 8-bit grey ("L"), by the module's rules."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0
    elif low >= 0 and high <= 1 and image.mode == "F":
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.nan_to_num(scaled).round().clip(0, 255).astype(np.uint8), mode="L")


def _on_white(image):
    from PIL import Image

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = PILLOW_MAX_PIXELS):
    """The image in ``data`` as a uint8 HxWx3 RGB array, as it looks; ImageRejected if unusable."""
    import numpy as np
    from PIL import ImageOps

    with _open(data, max_pixels) as image:
        image = ImageOps.exif_transpose(image)  # a phone photo stands as it was taken
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            image = _to_8bit(image)
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            image = _on_white(image)
        try:
            return np.asarray(image.convert("RGB"))
        except (ValueError, OSError) as e:
            raise ImageRejected(f"{image.mode} image cannot be converted to RGB: {e}") from None


def fit_square(image, size: int, mode: str, resample):
    """A PIL image made ``size`` x ``size``: ``center_crop`` (the largest centred square, then
    resized) or ``resize`` (stretched). References and their condition maps go through this one
    function, so a condition stays aligned with its image."""
    if mode == "center_crop":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), resample)

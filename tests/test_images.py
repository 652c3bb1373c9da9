"""The reference loader (case 11): every image mode becomes 8-bit RGB as it looks, EXIF
orientation applied, and an unusable image is rejected with its reason."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from engine.images import ImageRejected, decode_rgb

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")
LIMIT = 10**8


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_16bit_grey_png_looks_like_its_8bit_copy():
    """Case 11: the 16-bit frame (I;16) is the 8-bit control, not a white frame."""
    frame16 = decode_rgb(open(os.path.join(FIELD, "grey16.png"), "rb").read(), LIMIT)
    frame8 = decode_rgb(open(os.path.join(FIELD, "grey8.png"), "rb").read(), LIMIT)
    assert frame16.dtype == np.uint8 and frame16.shape == (64, 64, 3)
    assert np.abs(frame16.astype(int) - frame8).max() <= 1
    assert len(np.unique(frame16)) == 3  # background, disc and bar


GREY = np.array([[0, 64], [128, 255]], dtype=np.uint8)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: Image.fromarray(GREY.astype(np.uint16) * 257), id="16-bit"),
    pytest.param(lambda: Image.fromarray(GREY.astype(np.int32) * 257, mode="I"), id="32-bit holding 16-bit"),
    pytest.param(lambda: Image.fromarray(GREY.astype(np.float32) / 255), id="float 0..1"),
    pytest.param(lambda: Image.fromarray(GREY.astype(np.float32)), id="float 0..255"),
    pytest.param(lambda: Image.fromarray(GREY).convert("P"), id="palette"),
    pytest.param(lambda: Image.fromarray(GREY).convert("CMYK"), id="CMYK"),
    pytest.param(lambda: Image.fromarray(GREY).convert("LA"), id="grey with opaque alpha"),
])
def test_modes_become_8bit_rgb_as_they_look(make):
    image = make()
    fmt = "TIFF" if image.mode in ("F", "I", "CMYK") else "PNG"
    rgb = decode_rgb(encoded(image, fmt), LIMIT)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert np.abs(rgb[..., 0].astype(int) - GREY).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_1bit_image_is_black_and_white():
    rgb = decode_rgb(encoded(Image.fromarray(GREY > 100)), LIMIT)
    assert rgb[..., 0].tolist() == [[0, 0], [255, 255]]


def test_transparency_is_composited_over_white():
    """A transparent pixel's hidden colour (black here) must not reach the backend."""
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (255, 0, 0, 255)  # pixel 0: transparent black, pixel 1: opaque red
    assert decode_rgb(encoded(Image.fromarray(rgba)), LIMIT).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 0, 0, 255])
    rgb = decode_rgb(encoded(palette, transparency=0), LIMIT)  # palette index 0 is transparent
    assert rgb.tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_exif_orientation_is_applied():
    """A phone photo stored landscape with orientation 6 (rotate 90 clockwise) stands upright."""
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # top-left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb = decode_rgb(encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=100), LIMIT)
    assert rgb.shape == (3, 2, 3)
    assert rgb[0, 1].min() > 200 and rgb[0, 0].max() < 60  # the stored top-left is now top-right


def test_undecodable_and_over_limit_images_are_rejected_with_a_reason():
    with pytest.raises(ImageRejected, match=r"not an image Pillow can decode \(10 bytes, starting b'<html>\\n"):
        decode_rgb(b"<html>\n</>", LIMIT)
    png = encoded(Image.new("RGB", (40, 30)))
    with pytest.raises(ImageRejected, match=r"image does not decode: OSError"):
        decode_rgb(png[:len(png) // 2], LIMIT)
    with pytest.raises(ImageRejected, match=r"40x30 = 1200 pixels, over the limit of 1000 "
                                            r"\(prompts.max_image_pixels\)"):
        decode_rgb(png, 1000)
    assert decode_rgb(png, 1200).shape == (30, 40, 3)


def test_a_limit_above_pillows_default_is_honoured():
    """Pillow refuses images over twice its own MAX_IMAGE_PIXELS; the spec's limit is the one that counts."""
    png = encoded(Image.new("L", (300, 300)))
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 1000
    try:
        assert decode_rgb(png, 10**5).shape == (300, 300, 3)
    finally:
        Image.MAX_IMAGE_PIXELS = previous

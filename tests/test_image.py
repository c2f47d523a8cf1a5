"""talkhead.image: photo decoding (formats, alpha, modes, EXIF orientation, bad files) and the
output-size rules (``--max-size``, even sides).

Real-photo tests use ``skimage.data.astronaut()`` (512x512 NASA portrait, one face in rows ~20-200,
cols ~140-320).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import skimage.data
from PIL import Image

from talkhead.errors import ImageError, InputError, NoFaceError
from talkhead.image import even_size, limit_size, load_image
from talkhead.landmarks import detect_faces, select_face

ASTRO = skimage.data.astronaut()


# ============================================================================================ load_image
@pytest.mark.parametrize("ext,lossless", [("png", True), ("bmp", True), ("webp", True), ("jpg", False)])
def test_load_image_formats(tmp_path, ext, lossless):
    path = tmp_path / f"astro.{ext}"
    kwargs = {"lossless": True} if ext == "webp" else {"quality": 95} if ext == "jpg" else {}
    Image.fromarray(ASTRO).save(path, **kwargs)
    img = load_image(path)
    assert img.shape == ASTRO.shape and img.dtype == np.uint8 and img.flags.writeable
    if lossless:
        np.testing.assert_array_equal(img, ASTRO)
    else:
        assert np.abs(img.astype(int) - ASTRO).mean() < 3.0


def test_load_image_missing_and_corrupt(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="adir"):
        (tmp_path / "adir").mkdir()
        load_image(tmp_path / "adir")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageError, match="notes.png"):
        load_image(text)
    # A real PNG cut in half: the header parses, the pixel data does not.
    good = tmp_path / "full.png"
    Image.fromarray(ASTRO).save(good)
    cut = tmp_path / "truncated.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.png") as info:
        load_image(cut)
    assert not isinstance(info.value, NoFaceError)


def test_load_image_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :2, 3] = 0      # transparent -> white
    rgba[:, 2:4, 3] = 255   # opaque -> unchanged
    rgba[:, 4:, 3] = 128    # half -> blend with white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert (img[:, :2] == 255).all()
    assert (img[:, 2:4] == (10, 200, 30)).all()
    expected = np.rint(np.array([10, 200, 30]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(img[:, 4:].astype(int) - expected).max() <= 1
    # grayscale + alpha
    la = np.stack([np.full((3, 3), 40, np.uint8), np.full((3, 3), 0, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()


def test_load_image_gray_palette_16bit(tmp_path):
    gray = ASTRO.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (512, 512, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)

    pal = Image.fromarray(ASTRO).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 257 * 7)
    g16[0, 0], g16[0, 1] = 65535, 0
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img16 = load_image(tmp_path / "g16.png")
    assert img16.dtype == np.uint8 and img16.shape == (3, 4, 3)
    np.testing.assert_array_equal(img16[..., 0], np.rint(g16 / 257.0).astype(np.uint8))
    assert img16[0, 0, 0] == 255 and img16[0, 1, 0] == 0


def test_exif_rotated_jpeg_same_face(tmp_path, astro_face):
    # Orientation 6 = "rotate 90 degrees clockwise to display": store the picture turned 90 degrees
    # counter-clockwise, as a phone held sideways would.
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(ASTRO, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    raw = np.asarray(Image.open(path))
    assert raw.shape == ASTRO.shape and np.abs(raw.astype(int) - ASTRO).mean() > 20  # stored sideways
    img = load_image(path)
    assert img.shape == ASTRO.shape
    assert np.abs(img.astype(int) - ASTRO).mean() < 3.0
    face = select_face(detect_faces(img, backend="dlib"), source=str(path))
    assert np.abs(np.subtract(face.box, astro_face.box)).max() <= 8
    assert np.abs(face.landmarks - astro_face.landmarks).mean() < 3.0


# ============================================================================================ output size
def test_limit_size():
    img = np.zeros((600, 1000, 3), np.uint8)
    img[:, 500:] = 200
    small = limit_size(img, 500)
    assert small.shape == (300, 500, 3)
    assert small[:, :245].max() == 0 and small[:, 255:].min() == 200   # same content, no stretch
    assert limit_size(img, 1000) is img and limit_size(img, None) is img
    assert limit_size(np.zeros((1001, 333, 3), np.uint8), 100).shape == (100, 33, 3)
    for bad in (0, 1, -5, 2.5, "100", True):
        with pytest.raises(InputError, match="max-size"):
            limit_size(img, bad)


def test_even_size():
    odd = np.ascontiguousarray(ASTRO[:511, :313])
    even = even_size(odd)
    assert even.shape == (512, 314, 3)
    np.testing.assert_array_equal(even[:511, :313], odd)                   # nothing moved or cut
    np.testing.assert_array_equal(even[511, :313], odd[510])               # one mirrored row
    np.testing.assert_array_equal(even[:511, 313], odd[:, 312])            # one mirrored column
    assert even_size(ASTRO) is ASTRO
    assert even_size(np.ascontiguousarray(ASTRO[:, :301])).shape == (512, 302, 3)


def test_huge_photos_decode_quietly_or_fail_in_one_line(tmp_path, monkeypatch):
    """Between Pillow's pixel limit and twice it, a photo is decoded without Pillow's two-line
    DecompressionBombWarning on stderr; above twice the limit it is one ImageError line. The limit
    is lowered so the test photos stay small (same code path as a 100-200 megapixel photo)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn = tmp_path / "warn.png"
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(warn)  # 1600 px: warn zone
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(bomb)  # 2500 px > 2 x 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        assert load_image(warn).shape == (40, 40, 3)
    with pytest.raises(ImageError) as info:
        load_image(bomb)
    msg = str(info.value)
    assert "\n" not in msg and "bomb.png" in msg and "2,000 pixels" in msg and "downscale" in msg

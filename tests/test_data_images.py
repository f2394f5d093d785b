"""ImageFolder and load_image on files the tests write: every PIL mode a user's folder holds
comes out as the right RGB colors, the crop is centered, and each kind of bad file is
skipped with one warning line naming it, counted, and never crashes a DataLoader."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from halluscope.data import ImageFolder, load_image
from halluscope.data.images import read_rgb
from halluscope.data.pixels import to_uint8
from halluscope.errors import UserError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def solid(color, size=(6, 6), mode="RGB"):
    return Image.new(mode, size, color)


def colors(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> uint8 (H, W, 3) for comparing with known answers."""
    return to_uint8(x).astype(int)


def save(img, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def skip_lines(caplog, path):
    return [r for r in caplog.records if "skipping" in r.getMessage() and str(path) in r.getMessage()]


@pytest.mark.parametrize("suffix, kwargs, tolerance", [
    (".png", {}, 0), (".bmp", {}, 0), (".webp", {"lossless": True}, 0), (".jpg", {"quality": 95}, 3),
])
def test_rgb_formats_give_known_colors(tmp_path, suffix, kwargs, tolerance):
    path = save(solid((10, 200, 30)), tmp_path / f"a{suffix}", **kwargs)
    x = load_image(path, 6)
    assert x.shape == (3, 6, 6) and x.dtype == torch.float32
    assert np.abs(colors(x) - (10, 200, 30)).max() <= tolerance


def test_modes_are_converted_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])  # transparent, opaque, half
    assert read_rgb(save(rgba, tmp_path / "rgba.png")).tolist() == [
        [[255, 255, 255], [0, 0, 255], [127, 127, 127]]]  # composited onto white
    assert (colors(load_image(save(solid((0, 0, 0, 0), mode="RGBA"), tmp_path / "clear.png"), 6)) == 255).all()

    assert (colors(load_image(save(solid(77, mode="L"), tmp_path / "gray.png"), 6)) == 77).all()

    palette = Image.new("P", (2, 1))
    palette.putpalette(RED + BLUE + GREEN)
    palette.putdata([0, 1])
    assert read_rgb(save(palette, tmp_path / "p.png")).tolist() == [[list(RED), list(BLUE)]]
    # a palette index marked transparent is white, like any transparent pixel
    assert read_rgb(save(palette, tmp_path / "pt.png", transparency=0)).tolist() == [[list(WHITE), list(BLUE)]]


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    levels = np.array([[0, 65535, 1000, 32896]], dtype=np.uint16)
    path = save(Image.fromarray(levels), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I;16")
    # nearest 8-bit level of v * 255 / 65535: clipping would make 1000 white
    assert read_rgb(path).tolist() == [[[v] * 3 for v in (0, 255, 4, 128)]]
    square = np.full((4, 4), 1000, dtype=np.uint16)
    assert (colors(load_image(save(Image.fromarray(square), tmp_path / "sq.png"), 4)) == 4).all()


@pytest.mark.parametrize("size", [(30, 10), (10, 30)])
def test_resize_keeps_the_centered_square(tmp_path, size):
    stripes = Image.new("RGB", size)
    long_axis = int(np.argmax(size))
    for k, color in enumerate((RED, GREEN, BLUE)):  # thirds along the long side
        box = [0, 0, *size]
        box[long_axis], box[long_axis + 2] = 10 * k, 10 * (k + 1)
        stripes.paste(color, tuple(box))
    x = colors(load_image(save(stripes, tmp_path / "s.png"), 5))
    assert x.shape == (5, 5, 3) and (x == GREEN).all()


def test_upscaling_and_range(tmp_path):
    x = load_image(save(solid(WHITE, (4, 4)), tmp_path / "w.png"), 9)
    assert x.shape == (3, 9, 9) and torch.allclose(x, torch.ones_like(x))
    y = load_image(save(solid((0, 0, 0), (40, 40)), tmp_path / "b.png"), 8)
    assert torch.allclose(y, -torch.ones_like(y))


def test_folder_is_recursive_case_blind_and_ignores_hidden_and_other_files(tmp_path, caplog):
    save(solid(RED), tmp_path / "a" / "b" / "deep.PNG")
    save(solid(BLUE), tmp_path / "top.JpEg", quality=95)
    save(solid(GREEN), tmp_path / ".cache" / "copy.png")
    (tmp_path / "._top.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "notes.txt").write_text("not data")
    with caplog.at_level(logging.WARNING, logger="halluscope.data"):
        ds = ImageFolder(tmp_path, 4)
    assert [ds.source(i) for i in range(len(ds))] == ["a/b/deep.PNG", "top.JpEg"]
    assert ds.skipped == [] and not caplog.records
    assert ds.report().endswith("read 2 image files, skipped 0")
    assert (colors(ds[0]) == RED).all()


def test_content_decides_not_the_suffix(tmp_path):
    path = save(solid(RED), tmp_path / "really_a_jpeg.png", format="JPEG", quality=95)
    assert np.abs(colors(load_image(path, 6)) - RED).max() <= 3


@pytest.fixture
def data_bad_image_folder(tmp_path):
    """One good image and each kind of bad file; the truncated JPEG passes the header scan."""
    save(solid(GREEN), tmp_path / "good.png")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "video.jpg").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # an MP4 named .jpg
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(Image.fromarray(noise), tmp_path / "full.jpg", quality=90).read_bytes()
    (tmp_path / "full.jpg").unlink()
    (tmp_path / "truncated.jpg").write_bytes(full[: len(full) // 2])
    return tmp_path


def test_bad_files_are_skipped_once_each_with_a_warning_naming_them(data_bad_image_folder, caplog):
    root = data_bad_image_folder
    with caplog.at_level(logging.WARNING, logger="halluscope.data"):
        ds = ImageFolder(root, 8)
        reasons = dict(ds.skipped)
        assert set(reasons) == {root / "zero.png", root / "text.png", root / "video.jpg"}
        assert "0 bytes" in reasons[root / "zero.png"]
        assert "not an image" in reasons[root / "text.png"]
        assert [p.name for p in ds.files] == ["good.png", "truncated.jpg"]  # header looks fine

        # decoding finds the truncation: warned, recorded, and the next good item returned
        assert torch.equal(ds[1], ds[0])
        assert "truncated" in dict(ds.skipped)[root / "truncated.jpg"]
        assert torch.equal(ds[1], ds[0])  # asked again: no second warning
    for name in ("zero.png", "text.png", "video.jpg", "truncated.jpg"):
        assert len(skip_lines(caplog, root / name)) == 1, name
    assert ds.report() == f"{root}: read 1 image files, skipped 4 (see warnings above)"


def test_dataloader_and_iter_valid_survive_a_truncated_file(data_bad_image_folder):
    ds = ImageFolder(data_bad_image_folder, 8)
    batches = list(DataLoader(ds, batch_size=2))
    assert len(batches) == 1 and batches[0].shape == (2, 3, 8, 8)
    assert [i for i, _ in ds.iter_valid()] == [0]


def test_decompression_bombs_are_skipped_with_a_reason(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    save(solid(RED, (8, 8)), tmp_path / "small.png")
    save(solid(RED, (12, 12)), tmp_path / "warns.png")  # over the limit: PIL alone would only warn
    save(solid(RED, (20, 20)), tmp_path / "raises.png")  # over twice the limit: PIL raises
    with caplog.at_level(logging.WARNING, logger="halluscope.data"):
        ds = ImageFolder(tmp_path, 4)
    assert [p.name for p in ds.files] == ["small.png"]
    assert sorted(p.name for p, _ in ds.skipped) == ["raises.png", "warns.png"]
    assert all("too large to decode safely" in why for _, why in ds.skipped)


def test_folders_without_usable_images_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=f"no usable image file .* under {tmp_path}$"):
        ImageFolder(tmp_path, 8)
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(UserError, match=f"under {tmp_path}; skipped 1"):
        ImageFolder(tmp_path, 8)
    with pytest.raises(UserError, match="image folder not found: .*missing"):
        ImageFolder(tmp_path / "missing", 8)


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(UserError, match=r"cannot read .*bad\.png: not an image"):
        load_image(tmp_path / "bad.png", 8)
    with pytest.raises(UserError, match="file not found"):
        load_image(tmp_path / "none.png", 8)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = save(solid(RED, (4, 2)), tmp_path / "phone.jpg", exif=exif, quality=95)
    assert read_rgb(path).shape == (4, 2, 3)  # stored 4 wide, 2 high; shown upright

import os

import numpy as np
import pytest
from PIL import Image

from finetune.errors import FinetuneError
from finetune.evaluation import grid as grid_mod
from finetune.evaluation.grid import CELL_GAP, make_grid, save_png_atomic
from finetune.sampling.renderer import to_uint8


def _images(n, size=64):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_grid_size_5_images_3_columns():
    g = make_grid(_images(5, 300), [f"label {i}" for i in range(5)], ncols=3)
    assert isinstance(g, Image.Image) and g.mode == "RGB"
    assert g.width == 3 * 300 + 2 * CELL_GAP
    band = (g.height - CELL_GAP) // 2 - 300
    assert band > 10
    assert g.height == 2 * (300 + band) + CELL_GAP
    arr = np.asarray(g)
    assert arr[:300, :300].std() > 0  # first cell holds the image
    assert (arr[:300, 300 : 300 + CELL_GAP] == 255).all()  # gap between columns
    # The empty 6th cell stays white.
    assert (arr[300 + band + CELL_GAP :, 2 * (300 + CELL_GAP) :] == 255).all()
    # Default ncols = ceil(sqrt(5)) = 3; 300 px images are not resized.
    assert make_grid(_images(5, 300), ["x"] * 5).size == g.size


def test_label_band_white_with_dark_text():
    img = np.full((128, 128, 3), 128, np.uint8)
    g = np.asarray(make_grid([img], ["a cat toy"], cell_size=256))
    band = g[256:]
    assert band.shape[0] > 10
    assert np.median(band) == 255  # white band
    assert (band.max(axis=-1) < 100).sum() > 20  # dark text pixels
    # No label -> no dark pixels in the band.
    blank = np.asarray(make_grid([img], [""], cell_size=256))[256:]
    assert (blank.max(axis=-1) < 100).sum() == 0


def test_long_label_wraps_and_grows_band():
    img = _images(1, 64)[0]
    short = make_grid([img], ["short"])
    long = make_grid([img], ["a photo of <cat-toy> " * 12 + "averyveryveryverylongwordwithoutspaces" * 3])
    assert long.width == short.width == 256
    assert long.height > short.height + 20


def test_small_images_upscaled_nearest():
    img = np.zeros((64, 64, 3), np.uint8)
    img[::2, ::2] = 255  # checkerboard-ish pixels: NEAREST keeps exact 4x4 blocks
    g = make_grid([img], ["x"])
    assert g.width == 256
    arr = np.asarray(g)[:256]
    expected = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(arr, expected)


def test_to_uint8():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, 0.5], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 191])
    assert to_uint8(np.zeros((2, 4, 4, 3))).dtype == np.uint8


def test_mismatched_labels():
    with pytest.raises(ValueError):
        make_grid(_images(2), ["one"])


def test_save_png_atomic(tmp_path):
    g = make_grid(_images(2), ["a", "b"])
    out = save_png_atomic(g, tmp_path / "sub" / "grid.png")
    assert out.is_file()
    assert os.listdir(tmp_path / "sub") == ["grid.png"]
    with Image.open(out) as im:
        assert im.size == g.size
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(g))
    # Overwriting keeps one file.
    save_png_atomic(g, out)
    assert os.listdir(tmp_path / "sub") == ["grid.png"]


def test_save_into_unusable_dir_fails_cleanly(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    g = make_grid(_images(1), ["a"])
    with pytest.raises(FinetuneError, match="not_a_dir"):
        save_png_atomic(g, blocker / "grid.png")
    assert os.listdir(tmp_path) == ["not_a_dir"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_save_into_readonly_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(FinetuneError):
            save_png_atomic(make_grid(_images(1), ["a"]), ro / "grid.png")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    g = make_grid(_images(1), ["a"])
    target = tmp_path / "grid.png"
    save_png_atomic(g, target)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(grid_mod.Image.Image, "save", broken_save)
    with pytest.raises(FinetuneError, match="grid.png"):
        save_png_atomic(g, target)
    assert os.listdir(tmp_path) == ["grid.png"]
    assert target.read_bytes() == before  # the old file is untouched

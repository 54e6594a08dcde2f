"""Image data (digits, arrays, folders), level maps, bad input, and the PNG grid."""
import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.images import (
    DIGITS_LEVELS,
    digits,
    from_levels,
    image_grid,
    load_array,
    load_folder,
    load_images,
    save_grid,
    to_levels,
)


def test_digits_shape_levels_labels_and_the_fixed_split():
    from sklearn.datasets import load_digits

    train, test, full = digits("train"), digits("test"), digits("all")
    assert full.x.shape == (1797, 1, 8, 8) and full.x.dtype == torch.float32 and full.levels == DIGITS_LEVELS == 17
    assert train.x.shape[0] == 1437 and test.x.shape[0] == 360 and train.event_shape == (1, 8, 8)
    # the documented split: image i is a test image iff i % 5 == 0
    torch.testing.assert_close(test.x, full.x[::5], rtol=0, atol=0)
    assert torch.equal(torch.cat([train.y, test.y]).sort().values, full.y.sort().values)
    # the scaling is exact on the 17 levels: back to sklearn's integers 0..16, extremes at -1 and 1
    raw = torch.from_numpy(load_digits().images).long()
    assert torch.equal(to_levels(full.x, 17).reshape(-1, 8, 8), raw)
    assert float(full.x.min()) == -1.0 and float(full.x.max()) == 1.0
    assert set(full.y.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split: unknown 'val'"):
        digits("val")


def test_levels_round_trip_and_quantise():
    k = torch.arange(256)
    torch.testing.assert_close(to_levels(from_levels(k, 256), 256), k, rtol=0, atol=0)
    # a sample is quantised to the nearest level and clipped into range
    x = torch.tensor([-3.0, -1.0, -0.49, 0.0, 0.51, 2.0])
    assert to_levels(x, 3).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="levels"):
        to_levels(x, 1)


def test_arrays_keep_their_shape_and_uint8_means_256_levels(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(5, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "g.npy", grey)
    d = load_array(tmp_path / "g.npy")
    assert d.x.shape == (5, 1, 6, 6) and d.levels == 256 and d.y is None
    assert torch.equal(to_levels(d.x, 256)[:, 0], torch.from_numpy(grey).long())
    rgb = torch.rand(4, 3, 5, 5) * 2 - 1
    torch.save({"x": rgb, "y": torch.tensor([0, 1, 1, 2])}, tmp_path / "c.pt")
    d = load_array(tmp_path / "c.pt")
    assert d.levels is None and d.event_shape == (3, 5, 5) and d.y.tolist() == [0, 1, 1, 2]
    torch.testing.assert_close(d.x, rgb, rtol=0, atol=0)
    vec = torch.randn(7, 3)
    torch.save(vec, tmp_path / "v.pt")
    assert load_images(str(tmp_path / "v.pt")).x.shape == (7, 3)  # vectors stay vectors


def _png(path, array, mode):
    Image.fromarray(array, mode=mode).save(path)


def test_image_folders_grey_rgb_classes_and_resize(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "grey").mkdir()
    arrays = [rng.integers(0, 256, size=(4, 4), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        _png(tmp_path / "grey" / f"{i}.png", a, "L")
    (tmp_path / "grey" / "notes.txt").write_text("not an image")
    d = load_folder(tmp_path / "grey")
    assert d.x.shape == (3, 1, 4, 4) and d.levels == 256 and d.y is None
    assert torch.equal(to_levels(d.x, 256)[:, 0], torch.from_numpy(np.stack(arrays)).long())
    # class sub-folders give labels (sorted names); one RGB image makes the set RGB
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / "cls" / name).mkdir(parents=True)
        _png(tmp_path / "cls" / name / "a.png", rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8), "RGB")
        _png(tmp_path / "cls" / name / "b.png", arrays[k], "L")
    d = load_folder(tmp_path / "cls")
    assert d.x.shape == (4, 3, 4, 4) and d.y.tolist() == [0, 0, 1, 1]
    # a grey image read as RGB has three equal channels
    assert torch.equal(d.x[1, 0], d.x[1, 2])
    # mixed sizes need a resize
    _png(tmp_path / "grey" / "big.png", rng.integers(0, 256, size=(6, 6), dtype=np.uint8), "L")
    with pytest.raises(ValueError, match=r"big.png' is 6x6 but .* is 4x4; give image_size"):
        load_folder(tmp_path / "grey")
    assert load_folder(tmp_path / "grey", image_size=5).x.shape == (4, 1, 5, 5)


def test_bad_input_names_the_file_the_value_and_what_is_allowed(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="has no readable images; allowed: .png"):
        load_folder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="a.png' is not a readable image"):
        load_folder(tmp_path / "broken")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy' holds an object array.*save a numeric array"):
        load_array(tmp_path / "obj.npy")
    torch.save(torch.zeros(4, 2, 2), tmp_path / "good.pt")
    (tmp_path / "corrupt.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt.pt' is corrupt or not a file written by torch.save"):
        load_array(tmp_path / "corrupt.pt")
    torch.save({"x": torch.zeros(3, 2, 2), "y": torch.tensor([0, -1, 2])}, tmp_path / "neg.pt")
    with pytest.raises(ValueError, match="labels: .* has a label -1; allowed: integers >= 0"):
        load_array(tmp_path / "neg.pt")
    torch.save({"x": torch.zeros(3, 2, 2), "y": torch.tensor([0.0, 1.0, 2.0])}, tmp_path / "float.pt")
    with pytest.raises(ValueError, match="labels: .*dtype torch.float32; allowed: integers of shape \\(3,\\)"):
        load_array(tmp_path / "float.pt")
    np.save(tmp_path / "i32.npy", np.zeros((3, 2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="dtype torch.int32; allowed: a floating array .* or uint8"):
        load_array(tmp_path / "i32.npy")
    np.save(tmp_path / "5d.npy", np.zeros((2, 1, 1, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 1, 1, 2, 2\); allowed: \(N, C, H, W\)"):
        load_array(tmp_path / "5d.npy")
    with pytest.raises(ValueError, match="image_size: 16 given, but digits"):
        load_images("digits", image_size=16)
    with pytest.raises(ValueError, match="neither an image set"):
        load_images("cifar10")


def test_grid_tiles_images_in_rows_with_padding(tmp_path):
    # 5 images of 2x3, 3 per row, padding 1: a (1 + 2 * 3) x (1 + 3 * 4) grid with image i at row i // 3
    x = torch.stack([torch.full((1, 2, 3), -1.0 + 0.5 * i) for i in range(5)])
    g = image_grid(x, ncol=3, padding=1, pad_value=7)
    assert g.shape == (7, 13) and g.dtype == np.uint8
    for i in range(5):
        r, q = divmod(i, 3)
        block = g[1 + 3 * r: 3 + 3 * r, 1 + 4 * q: 4 + 4 * q]
        assert (block == round(255 * 0.25 * i)).all()
    assert (g[0] == 7).all() and (g[4:6, 9:12] == 7).all()  # the padding and the empty sixth cell
    rgb = torch.rand(4, 3, 2, 2) * 2 - 1
    path = save_grid(rgb, tmp_path / "g.png", scale=2, padding=0)
    back = np.asarray(Image.open(path))
    assert back.shape == (8, 8, 3)
    expected = torch.round(255 * (rgb[3] + 1) / 2).to(torch.uint8).permute(1, 2, 0).numpy()
    assert (back[4::2, 4::2] == expected).all()
    with pytest.raises(ValueError, match="channels"):
        image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="png"):
        save_grid(rgb, tmp_path / "g.jpg")

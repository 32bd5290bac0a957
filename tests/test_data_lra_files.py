"""LRA release-file loaders on small fixtures written in the released formats, and bad files:
each is refused with an error naming the file and line or record (CIFAR-10: test_data_cifar10)."""

import gzip

import numpy as np
import pytest

from seqzoo.data.listops import VOCAB
from seqzoo.data.lra_files import (
    load_lra_cifar10,
    load_lra_imdb,
    load_lra_listops,
    load_lra_pathfinder,
    load_lra_retrieval,
)


def test_listops_tsv(tmp_path):
    rows = {"train": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( ( [SM 3 ) 4 ) 5 ) ] )", 2)],
            "val": [("( ( [MIN 7 ) ] )", 7)], "test": [("( ( ( [MED 1 ) 8 ) ] )", 4)]}
    for split, examples in rows.items():
        lines = ["Source\tTarget"] + [f"{s}\t{t}" for s, t in examples]
        (tmp_path / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    data = load_lra_listops(tmp_path, max_length=8)
    train = data["train"]
    assert train["inputs"].shape == (2, 8) and data.vocab_size == 16 and data.num_classes == 10
    assert [VOCAB[i] for i in train["inputs"][0][train["mask"][0]]] == ["[MAX", "2", "9", "]"]
    np.testing.assert_array_equal(train["mask"].sum(axis=1), [4, 5])
    np.testing.assert_array_equal(train["targets"], [9, 2])
    assert (train["inputs"][~train["mask"]] == 0).all()
    assert data["test"]["targets"].tolist() == [4]


def _listops_files(directory, train: bytes) -> None:
    """Valid val / test files and ``train`` as the raw content of basic_train.tsv."""
    for split in ("val", "test"):
        (directory / f"basic_{split}.tsv").write_text("Source\tTarget\n( ( [MIN 7 ) ] )\t7\n")
    (directory / "basic_train.tsv").write_bytes(train)


def test_listops_gzipped_and_headerless_files(tmp_path):
    _listops_files(tmp_path, b"( ( [MAX 2 ) 9 ] )\t9\r\n\n( ( [MIN 3 ) 4 ] )\t3\n")
    (tmp_path / "basic_val.tsv.gz").write_bytes(
        gzip.compress((tmp_path / "basic_val.tsv").read_bytes()))
    (tmp_path / "basic_val.tsv").unlink()
    data = load_lra_listops(tmp_path, max_length=8)
    np.testing.assert_array_equal(data["train"]["targets"], [9, 3])  # no header: no row lost
    np.testing.assert_array_equal(data["val"]["targets"], [7])


@pytest.mark.parametrize("content, message", [
    pytest.param(b"", "holds no examples", id="empty"),
    pytest.param(b"Source\tTarget\n\n", "holds no examples", id="header_only"),
    pytest.param(b"Source\tTarget\n( [MAX 2 9 ] )  9\n", r":2: expected 'expression<TAB>label'",
                 id="no_tab"),
    pytest.param(b"Source\tTarget\n[MAX 2 9 ]\t9\t1\n", "found 2 tabs", id="two_tabs"),
    pytest.param(b"Source\tTarget\n[MAX 2 9 ]\t9\n[MAX 1 ]\t-1\n",
                 r":3: label '-1' is not an integer in 0..9", id="label_minus_1"),
    pytest.param(b"Source\tTarget\n[MAX 2 9 ]\t10\n", r":2: label '10' is not an integer",
                 id="label_10"),
    pytest.param(b"Source\tTarget\n[MAX 2 9 ]\tnine\n", r":2: label 'nine'", id="label_word"),
    pytest.param(b"Source\tTarget\n[MAX 2 9 ]\t2.5\n", r":2: label '2.5'", id="label_2.5"),
    pytest.param(b"Source\tTarget\n( )\t3\n", ":2: the expression before the tab is empty",
                 id="empty_expression"),
    pytest.param(b"Source\tTarget\n[FOO 2 9 ]\t3\n", ":2: unknown ListOps token '.FOO'",
                 id="unknown_token"),
    pytest.param(b"Source\tTarget\n[MAX 2 \xff ]\t3\n", ":2 is not UTF-8 text", id="not_utf8"),
])
def test_bad_listops_files_name_the_file_and_line(tmp_path, content, message):
    _listops_files(tmp_path, content)
    with pytest.raises(ValueError, match=message) as err:
        load_lra_listops(tmp_path, max_length=8)
    assert str(tmp_path / "basic_train.tsv") in str(err.value)


def test_retrieval_tsv(tmp_path):
    for name in ("train", "eval", "test"):
        lines = ["1\tid_a\tid_b\tabc\txy", "0.0\tid_c\tid_d\tlonger text\tz"]
        (tmp_path / f"new_aan_pairs.{name}.tsv").write_text("\n".join(lines) + "\n")
    data = load_lra_retrieval(tmp_path, max_length=5)
    split = data["val"]
    assert split["inputs"].shape == (2, 10) and data.vocab_size == 257
    np.testing.assert_array_equal(split["targets"], [1, 0])
    np.testing.assert_array_equal(split["inputs"][0, :5], [ord(c) + 1 for c in "abc"] + [0, 0])
    np.testing.assert_array_equal(split["inputs"][0, 5:], [ord("x") + 1, ord("y") + 1, 0, 0, 0])
    np.testing.assert_array_equal(split["inputs"][1, :5], [ord(c) + 1 for c in "longe"])
    np.testing.assert_array_equal(split["mask"][1], [True] * 6 + [False] * 4)
    (tmp_path / "new_aan_pairs.test.tsv").write_text("1\tonly\tthree\n")
    with pytest.raises(ValueError, match="new_aan_pairs.test.tsv:1 .* expected 5"):
        load_lra_retrieval(tmp_path)


@pytest.mark.parametrize("content, message", [
    pytest.param("1\ta\tb\tx\ty\n2\ta\tb\tx\ty\n",
                 r"test.tsv:2: label '2' is not an integer in 0..1", id="label_2"),
    pytest.param("0.5\ta\tb\tx\ty\n", r"test.tsv:1: label '0.5'", id="label_0.5"),
    pytest.param("\n\n", "test.tsv holds no examples", id="no_rows"),
])
def test_bad_retrieval_files_name_the_file_and_line(tmp_path, content, message):
    for name in ("train", "eval"):
        (tmp_path / f"new_aan_pairs.{name}.tsv").write_text("1\ta\tb\tx\ty\n")
    (tmp_path / "new_aan_pairs.test.tsv").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_lra_retrieval(tmp_path, max_length=4)


def test_imdb_bytes(tmp_path):
    for split in ("train", "test"):
        for polarity, text in (("pos", "Great film!"), ("neg", "Dull\u00e9")):
            folder = tmp_path / "aclImdb" / split / polarity
            folder.mkdir(parents=True)
            (folder / "0_9.txt").write_text(text, encoding="utf-8")
    data = load_lra_imdb(tmp_path, max_length=16)
    train = data["train"]
    np.testing.assert_array_equal(train["targets"], [0, 1])  # neg first, then pos
    np.testing.assert_array_equal(train["inputs"][0, :6],
                                  np.frombuffer("Dull\u00e9".encode(), np.uint8) + 1)
    assert train["mask"][0].sum() == 6 and train["mask"][1].sum() == 11
    (tmp_path / "aclImdb" / "test" / "pos" / "0_9.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="test/pos/0_9.txt is empty"):
        load_lra_imdb(tmp_path, max_length=16)


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_pathfinder_release_layout(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "pathfinder32" / "curv_baseline"
    (root / "metadata").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    text_rows, numpy_rows = [], []
    for batch, rows in ((0, text_rows), (1, numpy_rows)):
        for i in range(5):
            image = rng.integers(0, 256, (32, 32)).astype(np.uint8)
            label = (i + batch) % 2
            _write_png(root / "imgs" / str(batch) / f"sample_{i}.png", image)
            images[image.tobytes()] = label
            rows.append([f"imgs/{batch}", f"sample_{i}.png", str(i), str(label), "1.0", "6"])
    (root / "imgs" / "0" / "sample_5.png").write_bytes(b"")  # an empty image, skipped
    text_rows.append(["imgs/0", "sample_5.png", "5", "1", "1.0", "6"])
    (root / "metadata" / "0.npy").write_text("".join(" ".join(r) + "\n" for r in text_rows))
    np.save(root / "metadata" / "1.npy", np.array(numpy_rows))

    data = load_lra_pathfinder(tmp_path, resolution=32, difficulty="curv_baseline",
                               cache_dir=tmp_path / "cache", progress=False)
    sizes = {k: len(v["targets"]) for k, v in data.splits.items()}
    assert sizes == {"train": 8, "val": 1, "test": 1} and data.seq_len == 1024
    for split in data.splits.values():
        for row, label in zip(split["inputs"], split["targets"], strict=True):
            assert images[row.astype(np.uint8).tobytes()] == label
    cached = load_lra_pathfinder(tmp_path, resolution=32, difficulty="curv_baseline",
                                 cache_dir=tmp_path / "cache", normalize=True)
    np.testing.assert_allclose(cached["train"]["inputs"] * 255, data["train"]["inputs"],
                               atol=1e-4)


def _pathfinder_tree(root, images: list[np.ndarray], labels: list[str]):
    """A pathfinder32/curv_baseline release of ``images`` listed with ``labels`` in a text
    metadata file; returns the folder of that difficulty."""
    folder = root / "pathfinder32" / "curv_baseline"
    (folder / "metadata").mkdir(parents=True)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        _write_png(folder / "imgs" / "0" / f"sample_{i}.png", image)
        rows.append(f"imgs/0 sample_{i}.png {i} {label} 1.0 6\n")
    (folder / "metadata" / "0.npy").write_text("".join(rows))
    return folder


def _load_pathfinder32(root):
    return load_lra_pathfinder(root, resolution=32, difficulty="curv_baseline", cache_dir=None,
                               progress=False)


def test_pathfinder_16_bit_images_within_0_255_are_read(tmp_path):
    pytest.importorskip("PIL")
    image = (np.arange(1024) % 256).reshape(32, 32).astype(np.uint16)  # a 16-bit PNG
    _pathfinder_tree(tmp_path, [image] * 10, ["0", "1"] * 5)
    data = _load_pathfinder32(tmp_path)
    np.testing.assert_array_equal(data["train"]["inputs"][0], image.reshape(-1))


def _make_bad(case, folder):
    """Damages the pathfinder release in ``folder`` (see the parametrisation below)."""
    metadata, image = folder / "metadata", folder / "imgs" / "0" / "sample_1.png"
    if case == "pixel_300":
        _write_png(image, np.full((32, 32), 300, np.uint16))
    elif case == "size_64":
        _write_png(image, np.zeros((64, 64), np.uint8))
    elif case == "not_png":
        image.write_bytes(b"not a png")
    elif case == "missing_image":
        image.unlink()
    elif case == "text_label_2":
        text = (metadata / "0.npy").read_text().replace("sample_1.png 1 1", "sample_1.png 1 2")
        (metadata / "0.npy").write_text(text)
    elif case == "short_row":
        with open(metadata / "0.npy", "a") as handle:
            handle.write("imgs/0 sample_0.png\n")
    elif case == "numpy_label_2":
        np.save(metadata / "1.npy", np.array([["imgs/0", "sample_0.png", "0", "2"]]))
    elif case == "numpy_1d":
        np.save(metadata / "1.npy", np.array(["imgs/0", "sample_0.png", "0", "1"]))
    elif case == "numpy_objects":
        np.save(metadata / "1.npy", np.array([["imgs/0", 1]], dtype=object), allow_pickle=True)
    elif case == "all_empty":
        for png in (folder / "imgs" / "0").iterdir():
            png.write_bytes(b"")


@pytest.mark.parametrize("case, error, message", [
    ("pixel_300", ValueError, r"sample_1.png: pixel value 300 at row 0, column 0 .* 0..255"),
    ("size_64", ValueError, "sample_1.png is 64x64 pixels .* pathfinder32 images are 32x32"),
    ("not_png", ValueError, "sample_1.png .*0.npy:2.* is not a readable image"),
    ("missing_image", FileNotFoundError, "0.npy:2 lists the image .*sample_1.png, which does not"),
    ("text_label_2", ValueError, r"0.npy:2: label '2' is not an integer in 0..1"),
    ("short_row", ValueError, "0.npy:11: metadata row .* fewer than 4 columns"),
    ("numpy_label_2", ValueError, r"1.npy: row 0 \(counting from 0\): label '2'"),
    ("numpy_1d", ValueError, r"1.npy holds an array of shape \(4,\); metadata must be"),
    ("numpy_objects", ValueError, "1.npy is not a readable numpy array .* never pickled"),
    ("all_empty", ValueError, "list no non-empty image"),
])
def test_bad_pathfinder_files_name_the_file(tmp_path, case, error, message):
    pytest.importorskip("PIL")
    folder = _pathfinder_tree(tmp_path, [np.full((32, 32), 7, np.uint8)] * 10, ["0", "1"] * 5)
    _make_bad(case, folder)
    with pytest.raises(error, match=message):
        _load_pathfinder32(tmp_path)


@pytest.mark.parametrize("load,expected", [
    (load_lra_listops, "basic_train.tsv"),
    (load_lra_retrieval, "new_aan_pairs.train.tsv"),
    (load_lra_imdb, "aclImdb/train/pos"),
    (load_lra_cifar10, "cifar-10-batches-bin. Expected these files there:\n  data_batch_1.bin"),
    (load_lra_pathfinder, "pathfinder32/curv_contour_length_14/metadata"),
])
def test_missing_files_say_what_goes_where(tmp_path, load, expected):
    with pytest.raises(FileNotFoundError, match=expected):
        load(tmp_path / "missing")

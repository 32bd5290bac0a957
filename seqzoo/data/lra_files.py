"""Loaders for the released Long Range Arena files that the user brings (``data_dir``).

Encodings follow LRA's input pipelines: ListOps tokens as in :mod:`seqzoo.data.listops`;
text as bytes with id = byte + 1 (0 is padding, vocab 257, as tfds' ``ByteTextEncoder``);
images as pixel tokens 0..255 (vocab 256, float32 in [0, 1] with ``normalize``), CIFAR-10
turned grayscale as ``tf.image.rgb_to_grayscale``. Every split has inputs (n, l), targets
(n,) int32 and mask (n, l) bool (False on padding).
"""

import os
from pathlib import Path

import numpy as np

from seqzoo.data import cifar10, listops
from seqzoo.data.cache import DEFAULT_CACHE_DIR, cached_splits
from seqzoo.data.dataset import Dataset, make_split, pack_sequences
from seqzoo.data.files import find, missing, text_lines
from seqzoo.data.images import image_dataset, image_split, rgb_to_grayscale
from seqzoo.data.pathfinder import DIFFICULTIES, LRA_CONFIGS
from seqzoo.data.pathfinder_files import read_pathfinder_image, read_pathfinder_metadata
from seqzoo.data.progress import Progress
from seqzoo.data.validate import parse_label

BYTE_VOCAB = 257
LISTOPS_HEADER = ["Source", "Target"]


def byte_tokens(text: str | bytes) -> np.ndarray:
    """Token ids of a text's UTF-8 bytes: byte + 1."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(data, np.uint8).astype(np.int32) + 1


def _directory(data_dir) -> Path:
    return Path(data_dir).expanduser()


def read_listops_tsv(path: Path) -> tuple[list[list[int]], list[int]]:
    """Token ids and labels (0..9) of a ListOps TSV file: an optional ``Source<TAB>Target``
    header, then one ``expression<TAB>label`` line per example (blank lines are skipped). A
    malformed line is a ValueError naming the file and line; so is a file with no example."""
    sequences, labels = [], []
    for number, line in text_lines(path):
        fields = line.split("\t")
        if not line.strip() or (number == 1 and fields == LISTOPS_HEADER):
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'expression<TAB>label' (one tab), found "
                             f"{len(fields) - 1} tabs in {line[:80]!r}")
        try:
            tokens = listops.tokenize(fields[0])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not tokens:
            raise ValueError(f"{where}: the expression before the tab is empty")
        sequences.append(tokens)
        labels.append(parse_label(fields[1], listops.NUM_CLASSES, where))
    if not sequences:
        raise ValueError(f"{path} holds no examples; expected a 'Source<TAB>Target' header, "
                         f"then one 'expression<TAB>label' line per example")
    return sequences, labels


def load_lra_listops(data_dir: str | os.PathLike, max_length: int = 2000) -> Dataset:
    """ListOps from ``basic_{train,val,test}.tsv`` (LRA's ``listops-1000``; header
    ``Source<TAB>Target``, labels 0..9), truncated / padded to ``max_length`` tokens."""
    directory = _directory(data_dir)
    expected = [f"basic_{s}.tsv" for s in ("train", "val", "test")]
    splits = {}
    for split in ("train", "val", "test"):
        path = find(directory, f"basic_{split}.tsv", "LRA ListOps", expected)
        splits[split] = pack_sequences(*read_listops_tsv(path), max_length)
    return Dataset("lra_listops", splits, vocab_size=len(listops.VOCAB),
                   num_classes=listops.NUM_CLASSES, seq_len=max_length)


def load_lra_retrieval(data_dir: str | os.PathLike, max_length: int = 4000) -> Dataset:
    """AAN document matching from ``new_aan_pairs.{train,eval,test}.tsv`` (LRA's
    ``tsv_data``; columns label (0 or 1), id1, id2, text1, text2, no header), byte level.

    inputs (n, 2 * max_length): document 1 in ``[:, :max_length]`` and document 2 in
    ``[:, max_length:]``, each truncated / padded on its own; targets 0/1. Splits
    ``train`` / ``val`` (the ``eval`` file) / ``test``.
    """
    directory = _directory(data_dir)
    names = {"train": "train", "val": "eval", "test": "test"}
    expected = [f"new_aan_pairs.{n}.tsv" for n in names.values()]
    splits = {}
    for split, name in names.items():
        path = find(directory, f"new_aan_pairs.{name}.tsv", "LRA Retrieval (AAN)", expected)
        firsts, seconds, labels = [], [], []
        for number, line in text_lines(path):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 5:
                raise ValueError(f"{path}:{number} has {len(fields)} tab-separated "
                                 f"columns; expected 5 (label, id1, id2, text1, text2)")
            labels.append(parse_label(fields[0], 2, f"{path}:{number}"))
            firsts.append(byte_tokens(fields[3]))
            seconds.append(byte_tokens(fields[4]))
        if not labels:
            raise ValueError(f"{path} holds no examples; expected one line per pair: "
                             f"label, id1, id2, text1, text2 separated by tabs")
        one = pack_sequences(firsts, labels, max_length)
        two = pack_sequences(seconds, labels, max_length)
        splits[split] = make_split(np.concatenate([one["inputs"], two["inputs"]], axis=1),
                                   one["targets"],
                                   np.concatenate([one["mask"], two["mask"]], axis=1))
    return Dataset("lra_retrieval", splits, vocab_size=BYTE_VOCAB, num_classes=2,
                   seq_len=2 * max_length)


def load_lra_imdb(data_dir: str | os.PathLike, max_length: int = 4096) -> Dataset:
    """Byte-level IMDB sentiment from ``aclImdb/{train,test}/{pos,neg}/*.txt`` in
    ``data_dir`` (label 1 = pos), truncated / padded to ``max_length``. Splits ``train``
    and ``test`` (LRA validates on the test set). Files are read in sorted order."""
    root = _directory(data_dir) / "aclImdb"
    expected = [f"aclImdb/{s}/{c}/*.txt" for s in ("train", "test") for c in ("pos", "neg")]
    splits = {}
    for split in ("train", "test"):
        sequences, labels = [], []
        for label, polarity in ((0, "neg"), (1, "pos")):
            folder = root / split / polarity
            files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
            if not files:
                raise missing(f"IMDB reviews ({folder})", _directory(data_dir), expected)
            sequences += [_review_tokens(path) for path in files]
            labels += [label] * len(files)
        splits[split] = pack_sequences(sequences, labels, max_length)
    return Dataset("lra_imdb", splits, vocab_size=BYTE_VOCAB, num_classes=2, seq_len=max_length)


def _review_tokens(path: Path) -> np.ndarray:
    """Byte tokens of one review file; an empty file is a ValueError naming it."""
    tokens = byte_tokens(path.read_bytes())
    if len(tokens) == 0:
        raise ValueError(f"{path} is empty; every review file needs its text")
    return tokens


def load_lra_cifar10(data_dir: str | os.PathLike, val_fraction: float = 0.1,
                     normalize: bool = False) -> Dataset:
    """Grayscale CIFAR-10 as 1024-pixel sequences from the binary release
    (``cifar-10-binary.tar.gz``) extracted in ``data_dir``: ``cifar-10-batches-bin/``
    ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin`` (see
    :mod:`seqzoo.data.cifar10`; the pickled Python release is refused, never read).

    Gray = floor((0.2989 R + 0.5870 G + 0.1140 B) / 255 * 255.5), as TF's
    ``rgb_to_grayscale`` on uint8 (:func:`seqzoo.data.images.rgb_to_grayscale`). Splits
    ``train`` / ``val`` (the last ``val_fraction`` of the training batches, as LRA's
    ``train[90%:]``) / ``test``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_paths, test_path = cifar10.batch_paths(_directory(data_dir))

    def batch(path):
        rgb, labels = cifar10.read_batch(path)
        return rgb_to_grayscale(rgb, axis=1), labels

    train = [batch(path) for path in train_paths]
    train_x, train_y = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    test_x, test_y = batch(test_path)
    num_train = len(train_x) - round(val_fraction * len(train_x))
    splits = {"train": image_split(train_x[:num_train], train_y[:num_train])}
    if num_train < len(train_x):
        splits["val"] = image_split(train_x[num_train:], train_y[num_train:])
    splits["test"] = image_split(test_x, test_y)
    return image_dataset("lra_cifar10", splits, cifar10.NUM_CLASSES, normalize)


def load_lra_pathfinder(
    data_dir: str | os.PathLike,
    resolution: int = 32,
    difficulty: str = "curv_contour_length_14",
    seed: int = 0,
    normalize: bool = False,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> Dataset:
    """Released Pathfinder images from
    ``data_dir/pathfinder{resolution}/{difficulty}/imgs/*/sample_*.png`` listed by
    ``.../metadata/*.npy`` (text or numpy form; column 4 is the label, 0 or 1). Empty image
    files are skipped, as LRA does; images must be ``resolution`` x ``resolution`` with pixels
    in 0..255 (see :mod:`seqzoo.data.pathfinder_files`). Rows are shuffled with ``seed`` and
    split 80 / 10 / 10 % into ``train`` / ``val`` / ``test``. The decoded pixels are cached in
    ``cache_dir``. Needs Pillow.
    """
    if resolution not in LRA_CONFIGS or difficulty not in DIFFICULTIES:
        raise ValueError(f"resolution must be one of {sorted(LRA_CONFIGS)} and difficulty one "
                         f"of {sorted(DIFFICULTIES)}; got {resolution}, {difficulty!r}")
    root = _directory(data_dir) / f"pathfinder{resolution}" / difficulty
    metadata_files = sorted((root / "metadata").glob("*.npy"),
                            key=lambda p: (len(p.stem), p.stem))
    if not metadata_files:
        raise missing(f"Pathfinder{resolution} {difficulty} metadata", _directory(data_dir),
                      [f"pathfinder{resolution}/{difficulty}/metadata/<batch>.npy",
                       f"pathfinder{resolution}/{difficulty}/imgs/<batch>/sample_<i>.png"])

    def build():
        rows = [row for path in metadata_files for row in read_pathfinder_metadata(path)]
        images, labels = [], []
        with Progress(len(rows), f"Pathfinder{resolution} files", enabled=progress) as bar:
            for folder, name, label, where in rows:
                image = read_pathfinder_image(root / folder / name, resolution, where)
                if image is not None:
                    images.append(image)
                    labels.append(label)
                bar.update()
        if not images:
            raise ValueError(f"the metadata files in {root / 'metadata'} list no non-empty "
                             f"image")
        order = np.random.default_rng(seed).permutation(len(images))
        images, labels = np.stack(images)[order], np.asarray(labels)[order]
        cuts = [0, int(0.8 * len(images)), int(0.9 * len(images)), len(images)]
        return {split: image_split(images[a:b], labels[a:b]) for split, a, b in
                zip(("train", "val", "test"), cuts[:-1], cuts[1:], strict=True)}

    params = dict(dir=str(root.resolve()).strip(os.sep), seed=seed)
    splits = cached_splits(f"lra_pathfinder{resolution}", params, build, cache_dir)
    return image_dataset(f"lra_pathfinder{resolution}_{difficulty}", splits, 2, normalize)

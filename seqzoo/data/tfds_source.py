"""The ``tfds`` task's reader: a TFDS dataset prepared in ``array_record`` format, opened as a
random-access data source (``builder.as_data_source``, no TensorFlow at read time) and decoded
through a Grain pipeline into the splits every task returns.

    source = tfds.builder(dataset, data_dir=DIR).as_data_source(split="train[:90%]")
    rows   = grain.MapDataset.source(source).map(encode)     # example i -> (ids, label)
    split  = inputs (n, l), targets (n,), mask (n, l)         # in the source's order

The split is read once, in the source's order (fixed when the dataset was prepared), with
``workers`` decoding threads; training batches are then drawn from it by the runner like every
other task's (``seqzoo.runner.data``: the batch of step s is a function of (seed, s), each
process takes its rows of it), so a run is deterministic for a seed and resumes at its step.

Needs the ``[tfds]`` extra (tensorflow-datasets, grain, array_record, Pillow to decode images).
Preparing a dataset (``tfds build``) downloads it and needs TensorFlow once (and apache-beam,
which the ``tfds`` command imports: tensorflow/datasets#5463); reading it here does not.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from seqzoo.data.dataset import Dataset, Split, pack_sequences
from seqzoo.data.images import image_dataset, image_split
from seqzoo.data.parallel import default_workers
from seqzoo.data.progress import Progress
from seqzoo.data.tfds_presets import PRESETS, Preset, encoder, resolve_splits
from seqzoo.data.validate import check_labels

INSTALL = 'pip install "seqzoo[tfds]"'
PREPARE_INSTALL = "pip install tensorflow-cpu apache-beam"  # tensorflow/datasets#5463: the CLI


def import_tfds():
    """``tensorflow_datasets`` and ``grain``, or an ImportError that says how to get them."""
    try:
        import grain
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(f"the tfds task needs tensorflow-datasets, grain and array_record: "
                          f"{INSTALL} (TensorFlow is not needed to read)") from err
    return tfds, grain


def prepare_command(dataset: str, data_dir: str | os.PathLike) -> str:
    """The shell command that prepares ``dataset`` where the task reads it."""
    return f"tfds build {dataset} --data_dir={data_dir} --file_format=array_record"


def open_builder(tfds, dataset: str, data_dir: Path):
    """The TFDS builder of ``dataset`` prepared in ``data_dir`` as array_record; a
    FileNotFoundError with the ``tfds build`` command when it is not there, a ValueError when
    it was prepared in another format."""
    build = prepare_command(dataset, data_dir)
    hint = (f"Prepare it once (this downloads it; preparing needs TensorFlow, and the tfds "
            f"command apache-beam too: {PREPARE_INSTALL}) with:\n  {build}\nor set "
            f"task.data_dir to the directory you prepared it in")
    try:
        builder = tfds.builder(dataset, data_dir=os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise FileNotFoundError(f"TFDS dataset {dataset!r} (task.dataset) is neither prepared "
                                f"in {data_dir} nor a dataset tensorflow-datasets knows. "
                                f"{hint}") from None
    if not builder.is_prepared():
        raise FileNotFoundError(f"TFDS dataset {dataset!r} is not prepared in {data_dir} "
                                f"(no {builder.data_dir}). {hint}")
    found = builder.info.file_format
    if found != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(f"TFDS dataset {dataset!r} in {builder.data_dir} is stored as "
                         f"{found.value}, which has no random access; prepare it as "
                         f"array_record in another directory:\n  {build}")
    return builder


def check_features(builder, preset: Preset, name: str) -> int:
    """The number of classes of the preset's label feature, after checking that the dataset
    has both of the preset's features (a ValueError listing those it has)."""
    features = builder.info.features
    for key in (preset.inputs, preset.label):
        if key not in features:
            raise ValueError(f"TFDS dataset {builder.info.full_name} has no feature {key!r}, "
                             f"which preset {name!r} reads; its features are "
                             f"{', '.join(sorted(features.keys()))}")
    classes = getattr(features[preset.label], "num_classes", None)
    if classes != preset.num_classes:
        raise ValueError(f"feature {preset.label!r} of TFDS dataset {builder.info.full_name} "
                         f"has {classes} classes; preset {name!r} is a "
                         f"{preset.num_classes}-class task")
    return classes


def open_split(builder, tfds_split: str, split: str):
    """The data source of ``tfds_split`` (``train``, ``train[:90%]``, ``train[:5]+test`` ...),
    seqzoo's split ``split``; a ValueError naming task.splits and the dataset's splits when it
    names another split or does not parse."""
    known = list(builder.info.splits)
    where = f"task.splits: TFDS split {tfds_split!r} (seqzoo's {split!r})"
    unknown = [part for part in tfds_split.split("+") if part.split("[")[0].strip() not in known]
    if unknown:
        raise ValueError(f"{where}: TFDS dataset {builder.info.full_name} has no split "
                         f"{unknown[0]!r}; its splits are {', '.join(known)}")
    try:
        return builder.as_data_source(split=tfds_split)
    except ValueError as err:
        raise ValueError(f"{where} does not parse: {err}") from None


def read_split(grain, source, encode, workers: int, what: str, progress: bool) -> list:
    """``encode(example)`` of every example of ``source``, in order, decoded by ``workers``
    Grain threads."""
    rows = grain.MapDataset.source(source).map(encode)
    options = grain.ReadOptions(num_threads=max(1, workers), prefetch_buffer_size=64)
    out = []
    with Progress(len(source), what, enabled=progress) as bar:
        for row in rows.to_iter_dataset(options):
            out.append(row)
            bar.update()
    return out


def load_tfds(
    data_dir: str | os.PathLike,
    preset: str,
    dataset: str = "",
    splits: dict[str, str] | None = None,
    max_length: int = 4000,
    normalize: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """The ``Dataset`` of preset ``preset`` (:data:`seqzoo.data.tfds_presets.PRESETS`) read from
    the TFDS dataset ``dataset`` (default: the preset's) prepared in ``data_dir``.

    Image presets: inputs (n, h * w) pixel tokens 0..255 (float32 in [0, 1] with
    ``normalize``), every position valid. Text presets: inputs (n, max_length) byte ids
    1..256 cut to ``max_length`` and padded with 0, mask (n, max_length) False on padding.
    targets (n,) int32 class ids. ``splits`` maps seqzoo splits to TFDS splits over the
    preset's. Errors name what to fix: the dataset not prepared (with the ``tfds build``
    command), a split or feature it does not have, an image of another size.
    """
    tfds, grain = import_tfds()
    spec = PRESETS[preset]
    dataset = dataset or spec.dataset
    directory = Path(data_dir).expanduser()
    builder = open_builder(tfds, dataset, directory)
    num_classes = check_features(builder, spec, preset)
    workers = default_workers() if workers is None else workers
    out: dict[str, Split] = {}
    for split, tfds_split in resolve_splits(spec, splits or {}).items():
        source = open_split(builder, tfds_split, split)
        what = f"{builder.info.full_name} {tfds_split}"
        rows = read_split(grain, source, encoder(spec, max_length), workers, what, progress)
        if not rows:
            raise ValueError(f"{what} (seqzoo's {split!r} split) holds no examples")
        out[split] = _split(spec, rows, max_length, f"{what} ({split!r})")
    name = f"tfds_{dataset}"
    if spec.kind == "image":
        return image_dataset(name, out, num_classes, normalize)
    return Dataset(name, out, vocab_size=spec.vocab_size, num_classes=num_classes,
                   seq_len=max_length)


def _split(spec: Preset, rows: list, max_length: int, source: str) -> Split:
    """A classification split from ``(ids or pixels, label)`` rows; images of differing sizes
    are a ValueError naming the first odd one."""
    labels = check_labels(np.array([label for _, label in rows]), spec.num_classes, source,
                          unit="example")
    if spec.kind == "text":
        return pack_sequences([ids for ids, _ in rows], labels, max_length)
    shape = rows[0][0].shape
    odd = next((i for i, (pixels, _) in enumerate(rows) if pixels.shape != shape), None)
    if odd is not None:
        raise ValueError(f"{source}: example {odd} (counting from 0) is an image of "
                         f"{rows[odd][0].shape}, example 0 of {shape}; the task needs one size")
    return image_split(np.stack([pixels for pixels, _ in rows]), labels)

"""The tfds task on tiny CIFAR-10 and IMDB datasets this test prepares itself in TFDS's
array_record format (no download, no TensorFlow), read back by tensorflow-datasets' own
cifar10 / imdb_reviews builders as a user's prepared copy is: values, labels, masks, the
grayscale weights, errors, the runner's seeded order, and two training steps."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

# one worker runs this module (--dist loadgroup): its tests share module-scoped fixtures
pytestmark = pytest.mark.xdist_group("test_tfds")

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")
Image = pytest.importorskip("PIL.Image")

from test_tasks import TOY  # noqa: E402

from seqzoo.cli import main  # noqa: E402
from seqzoo.config import apply_overrides  # noqa: E402
from seqzoo.data.images import rgb_to_grayscale  # noqa: E402
from seqzoo.data.tfds_source import load_tfds  # noqa: E402
from seqzoo.runner.data import BatchSampler  # noqa: E402
from seqzoo.runner.experiments import load_experiment  # noqa: E402
from seqzoo.runner.memory import task_shape  # noqa: E402
from seqzoo.tasks import build_task  # noqa: E402

SEQ_LEN = 24


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def prepare(data_dir, dataset: str, features, splits: dict[str, list[dict]], config=None):
    """Prepares ``splits`` (lists of examples) as TFDS dataset ``dataset`` in ``data_dir``, in
    array_record format, at the version of tensorflow-datasets' own builder of that name (which
    then reads it)."""
    registered = tfds.builder_cls(dataset)
    if config:  # each config carries its version
        version = next(c.version for c in registered.BUILDER_CONFIGS if c.name == config)
    else:
        version = registered.VERSION
    configs = [tfds.core.BuilderConfig(name=config, version=version)] if config else []
    dataset_name = dataset

    class Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = dataset_name
        VERSION = version
        BUILDER_CONFIGS = configs

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(rows) for split, rows in splits.items()}

        def _generate_examples(self, rows):
            yield from enumerate(rows)

    Tiny(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def _reviews(n: int, offset: int) -> list[dict]:
    """Reviews of 5 to 40 bytes, some longer than SEQ_LEN, one with a two-byte character;
    label = index % 2, written in the text so each row can be matched to its example."""
    rows = []
    for i in range(offset, offset + n):
        text = f"review {i} label {i % 2} " + "é" * (i % 3) + "x" * (3 * i % 23)
        rows.append({"text": text.encode(), "label": i % 2})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(data_dir, {split: CIFAR-10 examples}, {split: IMDB examples})."""
    root = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    images = {split: [{"id": f"{split}_{i}",
                       "image": rng.integers(0, 256, (32, 32, 3)).astype(np.uint8),
                       "label": i % 10} for i in range(n)]
              for split, n in (("train", 20), ("test", 8))}
    image_features = tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(num_classes=10)})
    prepare(root, "cifar10", image_features,
            {s: [{**x, "image": _png(x["image"])} for x in rows] for s, rows in images.items()})
    reviews = {"train": _reviews(12, 0), "test": _reviews(6, 100)}
    text_features = tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])})
    prepare(root, "imdb_reviews", text_features, reviews, config="plain_text")
    return root, images, reviews


def _cfg(root, *overrides):
    return apply_overrides(load_experiment("smoke"),
                           ["task.name=tfds", f"task.data_dir={root}", *overrides])


def test_lra_image_reads_grayscale_cifar10_with_its_labels(data):
    root, images, _ = data
    cfg = _cfg(root, "task.preset=lra_image")
    built = build_task(cfg.task)
    assert (built.seq_len, built.vocab_size, built.num_classes) == (1024, 256, 10)
    shape = task_shape(cfg.task)
    assert (shape.length, shape.vocab_size, shape.num_classes) == (1024, 256, 10)
    sizes = {name: len(split["targets"]) for name, split in built.splits.items()}
    assert sizes == {"train": 18, "val": 2, "test": 8}  # train[:90%], train[90%:], test
    for name, source in (("train", "train"), ("val", "train"), ("test", "test")):
        expected = {rgb_to_grayscale(x["image"]).tobytes(): x["label"] for x in images[source]}
        split = built[name]
        assert split["inputs"].dtype == np.int32 and split["mask"].all()
        for row, label in zip(split["inputs"], split["targets"], strict=True):
            assert expected[row.astype(np.uint8).tobytes()] == label  # pixels row-major, gray
    seen = np.concatenate([built["train"]["inputs"], built["val"]["inputs"]])
    assert len({row.tobytes() for row in seen}) == 20  # the two slices cover train once
    normalized = build_task(_cfg(root, "task.normalize=true").task)
    assert normalized.vocab_size is None
    np.testing.assert_allclose(normalized["test"]["inputs"], built["test"]["inputs"] / 255,
                               rtol=1e-6)


def test_lra_text_reads_imdb_bytes_with_padding_masks(data):
    root, _, reviews = data
    built = build_task(_cfg(root, "task.preset=lra_text", f"task.seq_len={SEQ_LEN}").task)
    assert (built.seq_len, built.vocab_size, built.num_classes) == (SEQ_LEN, 257, 2)
    assert set(built.splits) == {"train", "test"}  # LRA validates on test
    for name in ("train", "test"):
        split, texts = built[name], {r["text"][:SEQ_LEN]: r["label"] for r in reviews[name]}
        lengths = split["mask"].sum(axis=1)
        assert split["inputs"].shape == (len(reviews[name]), SEQ_LEN)
        assert (split["inputs"][~split["mask"]] == 0).all()
        assert (lengths < SEQ_LEN).any() and (lengths == SEQ_LEN).any()
        for ids, mask, label in zip(split["inputs"], split["mask"], split["targets"],
                                    strict=True):
            assert mask[:mask.sum()].all()  # valid positions first, then padding
            text = bytes((ids[mask] - 1).astype(np.uint8).tolist())
            assert texts[text] == label


def test_reading_is_deterministic_and_the_runner_orders_by_seed(data):
    root = data[0]
    one = load_tfds(root, "lra_image", workers=1, progress=False)
    four = load_tfds(root, "lra_image", workers=4, progress=False)
    for name in one.splits:
        for key in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(one[name][key], four[name][key])
    train = one["train"]
    first = [BatchSampler(train, 8, seed=0).batch(s)["targets"] for s in (1, 2, 3)]
    again = [BatchSampler(train, 8, seed=0).batch(s)["targets"] for s in (3, 2, 1)][::-1]
    other = [BatchSampler(train, 8, seed=1).batch(s)["targets"] for s in (1, 2, 3)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # a step's batch depends on (seed, step) only
    assert any((a != b).any() for a, b in zip(first, other, strict=True))


def test_errors_name_the_fix(data, tmp_path):
    root = data[0]
    with pytest.raises(FileNotFoundError, match=(
            f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record")):
        build_task(_cfg(tmp_path).task)
    with pytest.raises(ValueError, match="has no split 'validation'; its splits are train, test"):
        build_task(_cfg(root, 'task.splits={"val": "validation"}').task)
    with pytest.raises(ValueError, match="TFDS split 'train\\[:abc\\]' .* does not parse"):
        build_task(_cfg(root, 'task.splits={"val": "train[:abc]"}').task)
    union = build_task(_cfg(root, 'task.splits={"val": "train[:3]+test[:2]"}').task)
    assert len(union["val"]["targets"]) == 5
    with pytest.raises(ValueError, match="has no feature 'image'.*label, text"):
        build_task(_cfg(root, "task.dataset=imdb_reviews").task)


def test_two_training_steps_on_lra_image_through_the_cli(data, tmp_path, capsys):
    argv = ["train", "lra/image_tfds_s4d", *TOY, f"task.data_dir={data[0]}", "model.d_model=16",
            "model.n_layers=1", "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    assert "to the transformer config of this task" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["test_loss"])

"""The tfds task's parts that need no tensorflow-datasets: TF's grayscale weights, the presets'
encoders (pixels, bytes), their splits, and the config checks made before any data is read."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from seqzoo.config import apply_overrides
from seqzoo.data.images import rgb_to_grayscale
from seqzoo.data.tfds_presets import PRESETS, encoder, image_pixels, resolve_splits, text_ids
from seqzoo.data.tfds_source import check_features
from seqzoo.runner.experiments import load_experiment
from seqzoo.runner.memory import task_shape
from seqzoo.tasks import check_task

# tf.image.rgb_to_grayscale (TensorFlow 2.21, CPU) of uint8 colours where rounding decides:
# float32 (x / 255) with a numpy tensordot, seqzoo's formula before it matched TF, gives one less
# on each (80 of the 256^3 colours). Over all 256^3 colours the helper equals TF's table.
TF_GRAY = {(3, 254, 50): 156, (78, 153, 67): 121, (139, 139, 163): 142, (192, 210, 210): 205,
           (222, 219, 85): 205, (0, 0, 0): 0, (255, 255, 255): 255, (255, 0, 0): 76}


def test_rgb_to_grayscale_equals_tensorflows_values():
    colours = np.array(list(TF_GRAY), np.uint8)
    np.testing.assert_array_equal(rgb_to_grayscale(colours), list(TF_GRAY.values()))
    # planes (n, 3, h, w) as the CIFAR-10 binary release gives the same as pixels (n, h, w, 3)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3)).astype(np.uint8)
    np.testing.assert_array_equal(rgb_to_grayscale(np.moveaxis(rgb, -1, 1), axis=1),
                                  rgb_to_grayscale(rgb))
    exact = np.floor(rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140] / 255 * 255.5)
    assert np.abs(rgb_to_grayscale(rgb) - exact).max() <= 1
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_grayscale(rgb[..., :2])


def test_image_pixels_turn_rgb_gray_and_keep_gray():
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(image_pixels(rgb), rgb_to_grayscale(rgb))
    assert image_pixels(rgb).shape == (32, 32) and image_pixels(rgb).dtype == np.uint8
    np.testing.assert_array_equal(image_pixels(rgb[..., :1]), rgb[..., 0])
    with pytest.raises(ValueError, match="height, width, 1 or 3"):
        image_pixels(rgb[..., 0])


def test_text_ids_are_utf8_bytes_plus_one_cut_to_length():
    np.testing.assert_array_equal(text_ids(b"Ab", 10), [ord("A") + 1, ord("b") + 1])
    np.testing.assert_array_equal(text_ids("é!", 10), [0xC3 + 1, 0xA9 + 1, ord("!") + 1])
    assert len(text_ids("x" * 50, 7)) == 7
    ids, label = encoder(PRESETS["lra_text"], 3)({"text": b"hello", "label": np.int64(1)})
    np.testing.assert_array_equal(ids, text_ids(b"hel", 3))
    assert label == 1


def test_splits_default_to_the_presets_and_take_overrides():
    image = PRESETS["lra_image"]
    assert resolve_splits(image, {}) == {"train": "train[:90%]", "val": "train[90%:]",
                                         "test": "test"}
    assert resolve_splits(image, {"val": ""}) == {"train": "train[:90%]", "test": "test"}
    assert resolve_splits(PRESETS["lra_text"], {"val": "test[:10]"})["val"] == "test[:10]"
    with pytest.raises(ValueError, match="task.splits names \\['dev'\\]"):
        resolve_splits(image, {"dev": "train"})
    with pytest.raises(ValueError, match="no 'train' split"):
        resolve_splits(image, {"train": ""})


def _cfg(*overrides):
    return apply_overrides(load_experiment("smoke"), ["task.name=tfds", *overrides])


def test_config_checks_before_any_data(tmp_path):
    with pytest.raises(ValueError, match="task.normalize is for image presets"):
        check_task(_cfg("task.preset=lra_text", "task.normalize=true",
                        f"task.data_dir={tmp_path}").task)
    with pytest.raises(ValueError, match="task.splits names"):
        check_task(_cfg('task.splits={"dev": "train"}', f"task.data_dir={tmp_path}").task)
    with pytest.raises(ValueError, match="task.preset must be one of lra_image, lra_text"):
        check_task(_cfg("task.preset=lra_audio", f"task.data_dir={tmp_path}").task)
    with pytest.raises(FileNotFoundError, match="tfds build DATASET"):
        check_task(_cfg(f"task.data_dir={tmp_path / 'none'}").task)
    for option in ("task.dataset=cifar10", 'task.splits={"val": ""}'):
        cfg = apply_overrides(load_experiment("smoke"), ["task.name=listops", option])
        with pytest.raises(ValueError, match="the tfds task's option, not 'listops'"):
            check_task(cfg.task)
    check_task(_cfg("task.preset=lra_image", "task.normalize=true",
                    f"task.data_dir={tmp_path}").task)


def test_abstract_shapes_of_the_presets():
    image = task_shape(_cfg("task.preset=lra_image").task)
    assert (image.length, image.vocab_size, image.num_classes) == (1024, 256, 10)
    text = task_shape(_cfg("task.preset=lra_text", "task.seq_len=4000").task)
    assert (text.length, text.vocab_size, text.num_classes) == (4000, 257, 2)


def test_features_are_checked_against_the_preset():
    def builder(**features):
        return SimpleNamespace(info=SimpleNamespace(features=features, full_name="mine/1.0.0"))

    label = SimpleNamespace(num_classes=2)
    assert check_features(builder(text=None, label=label), PRESETS["lra_text"], "lra_text") == 2
    with pytest.raises(ValueError, match="has no feature 'text'.*its features are body, label"):
        check_features(builder(body=None, label=label), PRESETS["lra_text"], "lra_text")
    with pytest.raises(ValueError, match="has 2 classes; preset 'lra_image' is a 10-class"):
        check_features(builder(image=None, label=label), PRESETS["lra_image"], "lra_image")

"""The dataset check every task passes before any compute (labels in range, inputs in the
vocabulary, pixels in 0..255, no empty split or row), and a bad data file through
``seqzoo train``: a clear error naming the file and line, no run folder, no training."""

import dataclasses

import numpy as np
import pytest

from seqzoo import tasks
from seqzoo.cli import main
from seqzoo.config import TaskConfig
from seqzoo.data import Dataset
from seqzoo.data.dataset import IGNORE_INDEX, make_split, pack_sequences
from seqzoo.data.validate import check_dataset, check_labels, check_pixels, parse_label


def _dataset(inputs, targets, mask=None, vocab_size=256, num_classes=10) -> Dataset:
    split = make_split(np.asarray(inputs), np.asarray(targets), mask)
    return Dataset("toy", {"train": split}, vocab_size, num_classes, split["inputs"].shape[1])


GOOD = _dataset([[1, 2, 3], [255, 0, 7]], [0, 9])


@pytest.mark.parametrize("data, message", [
    pytest.param(dataclasses.replace(GOOD, num_classes=5),
                 r"'train': row 1 \(counting from 0\) has label 9; labels must be integers in "
                 r"0..4", id="label_above_classes"),
    pytest.param(_dataset([[1, 2, 3], [4, 5, 6]], [0, -1]), "row 1 .* has label -1",
                 id="label_minus_1"),
    pytest.param(_dataset([[1, 2], [3, 4]], [[0, IGNORE_INDEX], [IGNORE_INDEX, 7]],
                          num_classes=5),
                 r"row 1, position 1 holds 7 as target, which must be in 0..4 or -100",
                 id="position_target_7_of_5"),
    pytest.param(_dataset([[1, 300, 3], [4, 5, 6]], [0, 1]),
                 r"row 0, position 1 holds 300 as input token, which must be in 0..255",
                 id="pixel_token_300"),
    pytest.param(_dataset(np.array([[0.5, np.nan]], np.float32), [1], vocab_size=None),
                 "row 0, position 1 holds nan as input, which must be finite", id="nan_input"),
    pytest.param(_dataset(np.zeros((0, 3), np.int32), np.zeros(0)), "'train' has no examples",
                 id="empty_split"),
    pytest.param(_dataset([[1, 2], [0, 0]], [1, 2], mask=[[True, True], [False, False]]),
                 "row 1 has no valid", id="all_padding_row"),
])
def test_check_dataset_names_task_split_and_row(data, message):
    with pytest.raises(ValueError, match=message) as err:
        check_dataset(data, "toy_task")
    assert "task 'toy_task'" in str(err.value)


def test_good_data_passes_unchanged():
    assert check_dataset(GOOD, "toy_task") is GOOD
    assert check_labels(np.array([0.0, 2.0]), 3, "f").dtype == np.int32
    np.testing.assert_array_equal(check_pixels(np.array([[0, 255]], ">i2"), "f"), [[0, 255]])
    assert parse_label(" 3\r", 10, "f:1") == 3 and parse_label("1.0", 2, "f:1") == 1


@pytest.mark.parametrize("text", ["-1", "10", "nan", "inf", "2.5", "", "x"])
def test_parse_label_refuses(text):
    with pytest.raises(ValueError, match=r"f:7: label .* is not an integer in 0..9"):
        parse_label(text, 10, "f:7")


def test_pack_sequences_needs_a_positive_length():
    with pytest.raises(ValueError, match="seq_len=0"):
        pack_sequences([[1, 2]], [0], 0)


def test_build_task_checks_every_task(monkeypatch):
    bad = dataclasses.replace(GOOD, num_classes=2)
    monkeypatch.setitem(tasks.TASKS, "toy_bad", tasks.Task(lambda cfg: bad, "bad labels"))
    with pytest.raises(ValueError, match="task 'toy_bad', split 'train': row 1 .* label 9"):
        tasks.build_task(TaskConfig(name="toy_bad"))


def test_bad_file_stops_train_before_any_compute_or_folder(tmp_path, capsys):
    data_dir = tmp_path / "listops"
    data_dir.mkdir()
    for split in ("train", "val", "test"):
        label = -1 if split == "val" else 3
        (data_dir / f"basic_{split}.tsv").write_text(f"Source\tTarget\n[MAX 1 3 ]\t{label}\n")
    run_dir = tmp_path / "run"
    argv = ["train", "smoke", "task.name=lra_listops", f"task.data_dir={data_dir}",
            "task.seq_len=16", "--run-dir", str(run_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data_dir / 'basic_val.tsv'}:2: label '-1' is not an integer in 0..9" in err
    assert not run_dir.exists()

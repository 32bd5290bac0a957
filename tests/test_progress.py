"""Progress of data generation, training and evaluation (issue 22, item 7): one ``Progress``
for all; plain lines and no carriage return off a terminal; an ETA only once measured, never
inflated by the warm-up before the first item, never NaN; ``--no-progress`` silences all."""

from __future__ import annotations

import io

import pytest

import seqzoo.data.progress as progress
from seqzoo.cli import main
from seqzoo.data.listops import generate_listops
from seqzoo.data.progress import Progress, progress_output
from tests.test_cli import shared_compilations  # noqa: F401 (an autouse fixture)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """A settable clock for the bars: ``clock.now = t``."""

    class Clock:
        now = 0.0

    monkeypatch.setattr(progress, "_now", lambda: Clock.now)
    return Clock


def test_off_a_terminal_a_long_phase_prints_plain_lines_at_10_percent_steps(clock):
    stream = io.StringIO()
    with Progress(100, "gen", stream=stream) as bar:
        for i in range(100):
            clock.now = i * 0.1  # 10 s in all
            bar.update()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # nothing in the first QUIET_S (5 s: 50 items), then one line per 10%
    assert [line.split()[1] for line in lines] == ["51/100", "60/100", "70/100", "80/100",
                                                   "90/100", "100/100"]
    assert lines[-1] == "gen: 100/100 100% 9s"
    stream, clock.now = io.StringIO(), 0.0
    with Progress(100, "gen", stream=stream) as bar:
        for now in (6.0, 8.0, 9.0):
            clock.now = now
            bar.update(5)
    # the end gets its own line where the last one is not the final count
    assert stream.getvalue().splitlines() == [
        "gen: 5/100 5% 6s", "gen: 10/100 10% 8s, eta 36s", "gen: 15/100 15% 9s, eta 25s"
    ]


def test_off_a_terminal_a_short_phase_prints_nothing(clock):
    stream = io.StringIO()
    with Progress(10, "gen", stream=stream) as bar:
        for i in range(10):
            clock.now = i * 0.1
            bar.update()
    assert stream.getvalue() == ""


def test_eta_is_measured_after_the_warm_up_and_never_nan(clock):
    stream = Terminal()
    bar = Progress(1000, "gen", stream=stream)
    clock.now = 60.0  # a slow first item (a pool starting, a compilation)
    bar.update()
    for k in range(1, 9):  # then 4 items/s
        clock.now = 60.0 + 0.25 * k
        bar.update()
        if k < 8:  # measured over less than MIN_ETA_S (2 s): no ETA yet
            assert bar.eta(clock.now) is None and "eta" not in stream.getvalue()
    # 991 left at 4 items/s (from all 62 s: 62 * 991 / 9 = 6827 s)
    assert bar.eta(clock.now) == 991 / 4
    assert stream.getvalue().endswith(
        "\r\033[Kgen: 9/1,000 [--------------------] 1% 1m02s, eta 4m07s"
    )
    empty = Terminal()
    Progress(5, "nothing done", stream=empty).close()  # e.g. the workers failed
    assert "nan" not in empty.getvalue() and "eta" not in empty.getvalue()


def test_a_terminal_bar_is_redrawn_in_place_and_a_transient_one_erased(clock):
    stream = Terminal()
    with Progress(4, "eval", stream=stream, transient=True) as bar:
        for i in range(4):
            clock.now = i * 0.3
            bar.update(note=f"loss {i}")
        assert stream.getvalue().count("\r\033[K") == 4 and "loss 3" in stream.getvalue()
    assert stream.getvalue().endswith("\r\033[K") and "\n" not in stream.getvalue()


def test_no_progress_silences_every_bar(clock):
    stream = Terminal()
    with progress_output(False), Progress(3, "gen", stream=stream) as bar:
        bar.update(3)
    Progress(3, "off", enabled=False, stream=stream).update(3)
    assert stream.getvalue() == ""
    with progress_output(False), progress_output(None):  # None keeps the caller's choice
        assert not Progress(3, "gen", stream=stream).enabled


def test_listops_generation_shows_its_progress_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    kwargs = dict(num_train=40, num_val=4, num_test=4, min_length=10, max_length=60, workers=1,
                  cache_dir=None)
    generate_listops(**kwargs)
    assert "\r\033[KListOps train: 40/40" in capsys.readouterr().err
    with progress_output(False):
        generate_listops(**kwargs)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_train_and_eval_show_their_progress_unless_no_progress(
    quiet, monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    monkeypatch.setattr(progress, "REDRAW_S", 0.0)  # every update drawn
    flag = ["--no-progress"] * quiet
    assert main(["train", "smoke", "--run-dir", str(tmp_path / "run"), *flag]) == 0
    trained = capsys.readouterr().err
    assert main(["eval", str(tmp_path / "run"), "--split", "val", *flag]) == 0
    evaluated = capsys.readouterr().err
    if quiet:
        assert trained == evaluated == ""
    else:
        assert "\r\033[Ktrain (steps): 4/4 [####################] 100%" in trained
        assert "\r\033[Keval val (batches): 2/2" in trained
        assert "\r\033[Keval test (batches): 3/3" in trained
        assert "\r\033[Keval val (batches): 2/2" in evaluated

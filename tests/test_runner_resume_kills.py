"""kill -9 at chosen and at random moments: a run killed and resumed any number of times ends
with the ``metrics.jsonl`` of the uninterrupted run, record for record (no record lost, none
twice), and a second process on a running run is refused with the owner's pid. SIGTERM and
SIGINT: the run saves the step under way and resumes from it to the uninterrupted run's
metrics, TensorBoard scalars and parameters.

Each session is a fresh ``seqzoo`` process (``SEQZOO`` below) with one kill point armed through
hooks of the standard library and the runner's data sampler, so no test code lives in the
package; the compiled steps come from JAX's persistent cache of this module.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from seqzoo.cli import main
from seqzoo.runner.build import build
from seqzoo.runner.checkpoint import Checkpoints
from seqzoo.runner.lock import LOCK_FILE
from seqzoo.runner.rundir import run_config
from tests.test_cli import records, shared_compilations  # noqa: F401 (an autouse fixture)
from tests.test_runner_config import _read_events

# one worker runs this module (--dist loadgroup): its tests share module-scoped fixtures
pytestmark = pytest.mark.xdist_group("test_runner_resume_kills")

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["smoke", "optim.steps=12", "checkpoint_every=2", "eval_every=3", "log_every=1"]

# argv: CACHE_DIR KILL_SPEC seqzoo-arguments...; KILL_SPEC (files are written in the cwd):
#   rename:REL   die instead of renaming anything onto RUN_DIR/REL (orbax commits a checkpoint
#                by renaming its temporary folder; write_atomic renames its temporary file)
#   torn:N       write half of the first metrics record of step N, then die
#   hold:N       before step N: write `held` (the pid), wait for the file `go`, go on
#   start        before the first step: write `started`
SEQZOO = r"""
import json, os, signal, sys, time
from pathlib import Path
import jax
jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
jax.config.update("jax_disable_most_optimizations", True)
cache, spec, *argv = sys.argv[1:]
jax.config.update("jax_compilation_cache_dir", cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
from seqzoo.runner.data import BatchSampler
from seqzoo.runner.metrics import MetricsLog
kind, _, arg = spec.partition(":")

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def before_step(action):
    fetch = BatchSampler.batch
    def batch(self, step):
        action(step)
        return fetch(self, step)
    BatchSampler.batch = batch

if kind == "rename":
    def hooked(real):
        def rename(src, dst, *args, **kwargs):
            if str(dst).endswith(os.sep + arg):
                die()
            return real(src, dst, *args, **kwargs)
        return rename
    os.rename, os.replace = hooked(os.rename), hooked(os.replace)
elif kind == "torn":
    write = MetricsLog.write
    def torn(self, step, split, values):
        if step == int(arg):
            line = json.dumps({"step": step, "split": split, **values})
            self.file.write(line[: len(line) // 2])
            self.file.flush()
            die()
        write(self, step, split, values)
    MetricsLog.write = torn
elif kind == "hold":
    def hold(step):
        if step == int(arg):
            Path("held").write_text(str(os.getpid()))
            while not Path("go").exists():
                time.sleep(0.01)
    before_step(hold)
elif kind == "start":
    before_step(lambda step: Path("started").touch())
from seqzoo.cli import main
sys.exit(main(argv))
"""


def seqzoo(folder: Path, spec: str, *argv: str) -> subprocess.Popen:
    """``seqzoo ARGV`` in a new process (working in ``folder``) with kill point ``spec``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cache = jax.config.jax_compilation_cache_dir
    command = [sys.executable, "-c", SEQZOO, cache, spec, *argv, "--no-progress"]
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, killed: bool) -> str:
    """Wait for ``process``; check that it was killed (-9) or succeeded; its stdout."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == (-signal.SIGKILL if killed else 0), err[-3000:]
    return out


def wait_for(path: Path, process: subprocess.Popen) -> bool:
    """Wait until ``path`` exists (True) or ``process`` ended (False)."""
    deadline = time.monotonic() + 300
    while not path.exists():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return True


def kill_after(process: subprocess.Popen, seconds: float) -> str:
    """kill -9 ``process`` after ``seconds`` unless it ended before; its stdout."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode in (0, -signal.SIGKILL), err[-3000:]
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run (its compiled steps fill the cache the sessions read)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert main(["train", *ARGS, "--run-dir", str(run_dir), "--no-progress"]) == 0
    return run_dir


def test_kills_at_every_stage_resume_to_the_uninterrupted_metrics_and_events(
    straight, tmp_path, capsys
):
    seed = int(os.environ.get("SEQZOO_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    run = tmp_path / "run"
    resume = ["train", "--resume", "--run-dir", str(run)]

    # 1. a new run, killed inside the write of checkpoint 4: written, not yet committed
    finish(seqzoo(tmp_path, "rename:checkpoints/4", "train", *ARGS, "--run-dir", str(run)), True)
    names = {p.name for p in (run / "checkpoints").iterdir()} - {"2"}
    assert names and all(n.startswith("4.") and "tmp" in n for n in names), names  # not "4"
    # 2. resumed from checkpoint 2, killed rewriting metrics.jsonl: the old file stays whole
    before = (run / "metrics.jsonl").read_text()
    finish(seqzoo(tmp_path, "rename:metrics.jsonl", *resume), True)
    assert (run / "metrics.jsonl").read_text() == before
    # 3. killed with the record of step 5 half written
    finish(seqzoo(tmp_path, "torn:5", *resume), True)
    assert not (run / "metrics.jsonl").read_text().endswith("\n")
    # 4. held before step 7: a second resume (or overwrite) is refused with the owner's pid;
    #    then released and killed at a random moment
    holder = seqzoo(tmp_path, "hold:7", *resume)
    assert wait_for(tmp_path / "held", holder), holder.communicate()[1][-3000:]
    capsys.readouterr()
    assert main(resume) == 2
    assert main(["train", *ARGS, "--run-dir", str(run), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count(f"is in use by process {holder.pid} (") == 2, err
    (tmp_path / "go").touch()
    out = kill_after(holder, rng.uniform(0, 0.6))
    assert "resuming from" in out and "skipped" not in out
    # a kill can land after the run released its lock, while the process exits: no lock left
    left = (run / LOCK_FILE).exists()
    assert not left or holder.returncode == -signal.SIGKILL  # a clean exit removes its lock
    # 5. takes the stale lock over (if 4 was killed), killed at a random moment of its training
    #    (if 4 left any: else it only tests the finished run again)
    session = seqzoo(tmp_path, "start", *resume)
    out = kill_after(session, rng.uniform(0, 0.6) if wait_for(tmp_path / "started", session) else 0)
    took_over = f"took over the lock of {run} left by process {holder.pid}"
    assert (took_over in out) == left, (seed, holder.returncode)
    # 6. killed after the test record was written, before summary.json
    finish(seqzoo(tmp_path, "rename:summary.json", *resume), True)
    # 7. resuming the finished run replaces its test record (deterministic), adds none
    out = finish(seqzoo(tmp_path, "", *resume), False)
    assert "only its test split is evaluated again" in out

    assert records(run) == records(straight), f"SEQZOO_KILL_SEED={seed}"
    assert scalars(run) == scalars(straight), f"SEQZOO_KILL_SEED={seed}"
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, straight)]
    assert summaries[0]["test_loss"] == summaries[1]["test_loss"]
    assert not list(run.glob(".*.tmp")) and not (run / "lock").exists()
    assert len((run / "resumes.jsonl").read_text().splitlines()) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("sweep", range(5))
def test_kills_at_random_moments_resume_to_the_uninterrupted_metrics(straight, tmp_path, sweep):
    """Sessions killed at a random moment of their training (checkpoint writes, evaluations
    and metrics rewrites included), until one finishes; a session killed before the first
    checkpoint starts the run over."""
    seed = int(os.environ.get("SEQZOO_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    run = tmp_path / "run"
    new = ["train", *ARGS, "--run-dir", str(run), "--overwrite"]
    resume = ["train", "--resume", "--run-dir", str(run)]
    for _ in range(30):
        (tmp_path / "started").unlink(missing_ok=True)
        saved = (run / "checkpoints").is_dir() and any(
            p.name.isdigit() for p in (run / "checkpoints").iterdir()
        )
        session = seqzoo(tmp_path, "start", *(resume if saved else new))
        training = wait_for(tmp_path / "started", session)
        kill_after(session, rng.uniform(0, 1.2) if training else 0)
        if session.returncode == 0:
            break
    assert session.returncode == 0, f"SEQZOO_KILL_SEED={seed}"
    assert records(run) == records(straight), f"SEQZOO_KILL_SEED={seed}"
    assert scalars(run) == scalars(straight), f"SEQZOO_KILL_SEED={seed}"


def scalars(run_dir: Path) -> dict[tuple[int, str], float]:
    """The TensorBoard scalars of ``run_dir`` by (step, tag), but throughput; none twice."""
    found = [
        ((e.step, v.tag), v.simple_value)
        for path in sorted(run_dir.glob("events.out.tfevents.*"))
        for e in _read_events(path)
        for v in e.summary.value
        if v.tag != "train/tokens_per_second"
    ]
    assert len(dict(found)) == len(found), "a step is in the TensorBoard events twice"
    return dict(found)


def final_params(run_dir: Path):
    checkpoints = Checkpoints(run_dir, read_only=True)
    try:
        return checkpoints.restore_params(build(run_config(run_dir)).params_shape).items["params"]
    finally:
        checkpoints.close()


def test_sigterm_and_sigint_save_the_step_under_way_and_resume_exactly_there(tmp_path):
    """Each signal is sent to a real ``seqzoo train`` process held before a step: SIGTERM
    before step 5 (steps 4 and 5 not yet recorded: log_every=3), SIGINT before step 8 (a
    checkpoint step). Each session finishes that step, saves it and says so; resumed, the run
    ends as the uninterrupted one, with no step twice in metrics.jsonl or the events."""
    args = ["smoke", "optim.steps=12", "checkpoint_every=4", "eval_every=6", "log_every=3"]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", *args, "--run-dir", str(straight), "--no-progress"]) == 0
    sessions = [
        (signal.SIGTERM, 5, ["train", *args, "--run-dir", str(run)]),
        (signal.SIGINT, 8, ["train", "--resume", "--run-dir", str(run)]),
    ]
    for number, step, argv in sessions:
        for name in ("held", "go"):
            (tmp_path / name).unlink(missing_ok=True)
        session = seqzoo(tmp_path, f"hold:{step}", *argv)
        assert wait_for(tmp_path / "held", session), session.communicate()[1][-3000:]
        session.send_signal(number)
        (tmp_path / "go").touch()
        _, err = session.communicate(timeout=300)
        assert session.returncode == 128 + number, err[-3000:]
        assert f"seqzoo: {number.name} received: the run stops after the step under way" in err
        assert f"seqzoo: stopped by {number.name} after step {step}, saved in " in err
        assert f"--run-dir {run}` continues from step {step}" in err
        assert max(int(p.name) for p in (run / "checkpoints").iterdir()) == step
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0
    assert records(run) == records(straight)
    assert scalars(run) == scalars(straight)
    same = jax.tree.map(np.array_equal, final_params(run), final_params(straight))
    assert all(jax.tree.leaves(same))

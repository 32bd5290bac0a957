"""One run over several processes (``seqzoo.runner.distributed``): 2 local processes x 4 fake CPU
devices (gloo collectives) train as 1 process x 8 devices does, on the same (data=2, seq=4) mesh
with FSDP parameters: equal loss curves; a checkpoint the 2 processes saved resumes on 1 process;
a process killed mid-run stops the other with JAX's error (no hang), and the resumed run ends as
the uninterrupted one. Every run is ``seqzoo train`` in fresh interpreters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqzoo.runner.distributed import agree, launch
from seqzoo.runner.metrics import read_metrics

CONFIG = [
    "task.seq_len=32", "task.num_kv_pairs=4", "task.vocab_size=64", "task.num_train=256",
    "task.num_val=8", "task.num_test=8", "model.mixer=attention", "model.n_layers=1",
    "model.d_model=32", 'model.mixer_options={"num_heads": 4}', "optim.batch_size=8",
    "optim.lr=3e-3", "optim.warmup_steps=2", "log_every=1", "eval_every=1000",
    "mesh.data=2", "mesh.seq=4", "mesh.params=fsdp",
]
SHORT = ["optim.steps=4", "checkpoint_every=2"]
DIED = "another task died"  # JAX's message when a peer process is gone
# `seqzoo train` runs one after another in one interpreter (the first failure stops it)
IN_TURN = (
    "import json, sys; from seqzoo.cli import main; "
    "sys.exit(next((code for code in map(main, json.loads(sys.argv[1])) if code), 0))"
)


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env


def _train_args(run_dir: Path, extra: list[str], *flags: str) -> list[str]:
    return ["train", *CONFIG, *extra, "--run-dir", str(run_dir), "--no-progress", *flags]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(run_dir: Path, extra: list[str], *flags: str) -> list[subprocess.Popen]:
    """The two processes of a run (4 devices each), started."""
    where = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "seqzoo.cli",
             *_train_args(run_dir, extra, *flags, *where, "--process-id", str(i))],
            env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]


def _finish(processes: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """``(return code, stderr)`` of each process, once all have ended."""
    return [(p.wait(timeout), p.communicate()[1]) for p in processes]


def _one(*runs: list[str]) -> None:
    """The ``seqzoo train`` argument lists ``runs`` in turn, in one process of 8 devices."""
    done = subprocess.run([sys.executable, "-c", IN_TURN, json.dumps(runs)], env=_env(8),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def test_two_processes_train_as_one_and_resume_on_one(tmp_path):
    two, one, moved = tmp_path / "two", tmp_path / "one", tmp_path / "moved"
    ends = _finish(_start_two(two, SHORT))
    assert [code for code, _ in ends] == [0, 0], [err[-3000:] for _, err in ends]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["2", "4"]
    assert not (two / "lock").exists()
    # and the checkpoint of step 2 written by 2 processes, resumed by 1 process of 8 devices
    shutil.copytree(two, moved)
    shutil.rmtree(moved / "checkpoints" / "4")
    _one(_train_args(one, SHORT), _train_args(moved, SHORT, "--resume"))
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    assert len(_losses(two)) == 4 and len(set(_losses(two))) == 4
    assert _losses(moved) == pytest.approx(_losses(one), abs=1e-5)
    resumes = [json.loads(line) for line in (moved / "resumes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumes] == [2]


@pytest.mark.slow
def test_a_killed_process_stops_the_other_and_the_run_resumes(tmp_path):
    long = ["optim.steps=40", "checkpoint_every=4"]
    run, reference = tmp_path / "run", tmp_path / "reference"
    processes = _start_two(run, long)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 10):
        assert time.monotonic() < deadline and processes[0].poll() is None
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (code, err), _ = _finish(processes, timeout=120)
    assert code != 0 and DIED in err, err[-3000:]
    assert time.monotonic() - killed_at < 120
    assert read_metrics(run)[-1]["step"] < 40  # it did stop mid-run
    ends = _finish(_start_two(run, long, "--resume"))
    assert [c for c, _ in ends] == [0, 0], [e[-3000:] for _, e in ends]
    _one(_train_args(reference, long))
    assert _losses(run) == pytest.approx(_losses(reference), abs=1e-5)


@pytest.mark.parametrize(
    "env, flags, expected",
    [
        ({}, (None, None, None), None),
        ({}, ("h:1", 2, 1), {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}),
        ({"JAX_COORDINATOR_ADDRESS": "h:1"}, (None, 2, 0),
         {"coordinator_address": "h:1", "num_processes": 2, "process_id": 0}),
        ({"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, (None, None, None), {}),
        ({"SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}, (None, None, None), None),
        ({"SLURM_NTASKS": "4"}, (None, None, None), None),  # sbatch's shell, not srun
        ({"TPU_WORKER_HOSTNAMES": "a,b"}, (None, None, None), {}),
        ({"TPU_WORKER_HOSTNAMES": "a"}, (None, None, None), None),
    ],
)
def test_launch_reads_the_flags_then_the_environment(env, flags, expected):
    assert launch(env, *flags) == expected


@pytest.mark.parametrize("flags, match", [
    ((None, 2, 0), "missing --coordinator"),
    (("h:1", None, None), "missing --num-processes, --process-id"),
    (("h:1", None, 0), "missing --num-processes"),
    (("h:1", 2, 2), r"--process-id=2 must be in \[0, --num-processes=2\)"),
])
def test_launch_refuses_incomplete_flags(flags, match):
    with pytest.raises(ValueError, match=match):
        launch({}, *flags)


def test_one_process_agrees_with_itself():
    assert agree(True) and not agree(False)

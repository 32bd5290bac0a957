"""``benchmarks/compare_revisions.py``: revisions' files written by ``prepare``, kernels.py run
in each of them round-robin by ``run``, its timing lines read back into one table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_revisions  # noqa: E402

# a stand-in for kernels.py: prints its folder's time per variant (as kernels.py's lines) and,
# in folder "b", times that grow by 1 ms a round (the rounds' spread) and no "new" variant
FAKE = '''
import sys
from pathlib import Path
here = Path.cwd().name
count = Path("calls")
calls = int(count.read_text()) if count.exists() else 0
count.write_text(str(calls + 1))
base = {"a": 1.0, "b": 3.0}[here] + (calls if here == "b" else 0)
print("# fake device, args", " ".join(sys.argv[1:]))
print(f"  selective_scan fwd | B4 L2048 D2048 N16 bf16 | pallas: {base:.3f} ms, err 0.0e+00")
if here == "a":
    print("  selective_scan fwd | B4 L2048 D2048 N16 bf16 | new: 0.500 ms, err 1.0e-03")
'''


def test_timings_reads_the_lines_kernels_py_prints():
    out = "\n".join([
        "# NVIDIA H100 (gpu), jax 0.11.2",
        "  linear_attention key fwd | B4 T2048 H16 D128 bf16 | fla chunk_gla: 0.790 ms, err 7e-4",
        "  selective_scan fwd+bwd | B4 L2048 D2048 N16 bf16 | pallas w8 c8 n1: 1.173 ms, err 2e-3",
        "| kernel | shape | variant | ms |"])
    assert compare_revisions.timings(out) == {
        ("linear_attention key fwd", "B4 T2048 H16 D128 bf16", "fla chunk_gla"): 0.790,
        ("selective_scan fwd+bwd", "B4 L2048 D2048 N16 bf16", "pallas w8 c8 n1"): 1.173,
    }


def test_run_interleaves_revisions_and_tables_the_median_of_rounds(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fake.py").write_text(FAKE)
    (tmp_path / "ORDER").write_text("a\nb\n")
    text = compare_revisions.run(tmp_path, rounds=3, worktree=False, args=["--only", "x"],
                                 timeout=60, script=Path("fake.py"))
    rows = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    assert rows["pallas"] == ("| selective_scan fwd B4 L2048 D2048 N16 bf16 | pallas | 1.000 "
                              "(1.000-1.000) | 4.000 (3.000-5.000) |")
    assert rows["new"].endswith("| 0.500 (0.500-0.500) |  |")  # "b" has no such variant
    printed = capsys.readouterr().out
    assert printed.index("[a, round 1]") < printed.index("[b, round 1]") < printed.index(
        "[a, round 2]")
    assert (tmp_path / "b" / "calls").read_text() == "3"


def test_a_failed_run_is_shown_and_left_blank(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "fake.py").write_text("raise SystemExit('no GPU here')")
    (tmp_path / "ORDER").write_text("a\n")
    text = compare_revisions.run(tmp_path, rounds=1, worktree=False, args=[], timeout=60,
                                 script=Path("fake.py"))
    assert text.splitlines()[2:] == []
    assert "no GPU here" in capsys.readouterr().out


def test_prepare_writes_each_revision_without_notebooks(tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    compare_revisions.prepare(["HEAD"], tmp_path)
    assert (tmp_path / "ORDER").read_text() == "HEAD\n"
    assert (tmp_path / "HEAD" / "benchmarks" / "kernels.py").is_file()
    assert not (tmp_path / "HEAD" / "notebooks").exists()
    assert compare_revisions.folder_name("origin/main") == "origin_main"

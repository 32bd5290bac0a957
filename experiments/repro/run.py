"""Issue #11 on one GPU: the configs under experiments/repro/ train at once, as subprocesses of the
runner's command line, before one wall-clock deadline; then a markdown table of their final test
accuracies beside the papers' numbers, and learning curves.

    python experiments/repro/run.py --out OUT --minutes 7.5 --group lra   # from the repo root
    python experiments/repro/run.py --out OUT --only listops_s4d mqar_attention_d64@lr=0.01
    python experiments/repro/run.py --out OUT --toy                       # tiny, on a CPU

``GROUPS`` name sets of runs that fit one call on an H100 together (in memory: in time each
run's ``max_minutes`` cuts it at the deadline); ``--only`` takes runs from any group, by
``Run.key`` (the config's name, with ``@lr=...`` for a point of an lr sweep). A run may also
name an experiment outside experiments/repro/ (``Run.folder``): issue 27's groups ``issue27``,
``jrt_conv``, ``jrt_deep``, ``based_tradeoff`` and ``based_fig2_*`` train top-level experiments
(``mqar_mom``, ``mqar_jrt_based_conv``, ``mqar_based_recipe``, ``mqar_based_fig2``).

Runs of tasks generated on the fly start at once. ListOps, then Pathfinder, are generated here
first on every core into seqzoo's data cache, which their runs then read; those runs start as
their data is ready. Every run gets ``max_minutes``: the time left until the deadline less
``EVAL_RESERVE`` (it then evaluates and tests its last step); one still alive at the deadline
is killed and reported so. The runs share the GPU: each run's allocator takes its cap at start
(instead of 75% of the GPU) as one pool, 1.5 times its expected peak plus 2 GB (``Run.memory_gb``:
the temporary buffers of its compiled train or, if larger, test step, from XLA's memory
analysis on a CPU, where Mamba's selective scan is XLA's associative scan: on a GPU it is the
Pallas kernel, which keeps far less, so those are upper bounds; ListOps Mamba's is an estimate
by hand).

OUT receives at most ``--out-files`` files, 8 by default (``OUT_FILES``: the device tool
returns 8, in alphabetical order, and silently drops the rest and any file over 16 MiB; if you
write files of your own in OUT, a log say, leave room for them: ``--out-files 7``). The launcher
counts every file it writes there: ``results.md`` (the table, also printed), ``runs.tar.gz``
(each run's config, metrics, summary and log), ``curves_<task>.png`` per task, then the states
below. Run directories, with their checkpoints, stay under ``--work``.

A run longer than one call continues in the next one, on another machine: ``--save-state``
also writes each run's directory (its newest checkpoint, the best ones, metrics and config) as
``state_<key>.tar.gz`` in OUT, in the files OUT has left (``plan_states``): an archive larger
than 15 MiB (``PACK_BYTES``) travels cut into ``state_<key>.tar.gz.part<i>`` files of 15 MiB,
all its parts or none; the others loose, or packed in ``states_<i>.tar`` files of at most 15
MiB each where one file per state would not fit. The states are weighed first those of runs
that did not reach their planned steps (they need them to continue), then the finished ones,
each in the order the runs were selected (the group's, or ``--only``'s); each is kept if it
fits beside those before it, else left out whole, and the table and stdout say so per run
(``state of <key> (<size> MiB) not returned: OUT holds 8 files``): run it with ``--only <key>
--save-state`` in a call of its own. A later call given that folder with ``--resume-from DIR``
unpacks a run's archive, loose, joined from its parts (refused if one is missing, or the joined
archive is cut short) or from a pack, and continues the run with ``seqzoo train --resume`` (the
same model, data, seed and batches; the data is generated again, identical for its seed) for
that call's minutes::

    python experiments/repro/run.py --out $OUT --minutes 9 --only pathfinder_s4d --save-state
    python experiments/repro/run.py --out $OUT --minutes 9 --only pathfinder_s4d --save-state \
        --resume-from carried/   # the previous call's state_pathfinder_s4d.tar.gz

A run may start from another run's model (``Run.init_from``, a curriculum: ``seqzoo train
--init-from``): that run's directory must be in ``--work`` (``WORK/runs/<key>``, from an earlier
call with the same ``--work``) or its state in ``--resume-from`` (unpacked into ``--work``);
with ``--toy``, a toy source found in neither is trained here first. A run resumed from its own
state continues from its own checkpoint and needs no source.

Fashion-MNIST is read from ``--data-dir``/fashion-mnist when that folder exists (a copy of the
package's four ``*-ubyte.gz`` files), else from the Debian package's folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's seqzoo, installed or not

from experiments.based_tradeoff import (  # noqa: E402
    FIG2,
    RECIPE,
    fig2_overrides,
    fig2_swa_overrides,
    point_override,
)
from seqzoo.config import ExperimentConfig, apply_overrides  # noqa: E402
from seqzoo.runner.checkpoint import BEST, LATEST, best_needed  # noqa: E402
from seqzoo.runner.experiments import load_experiment  # noqa: E402
from seqzoo.runner.resume import RESUMABLE  # noqa: E402
from seqzoo.runner.rundir import CONFIG_FILE, SUMMARY_FILE, read_summary  # noqa: E402
from seqzoo.tasks import build_task  # noqa: E402

EVAL_RESERVE = 45.0  # seconds between a run's training deadline and the launcher's
COLLECT_RESERVE = 15.0  # seconds kept at the end for the table, curves and archive
CACHED_TASKS = ("listops", "pathfinder")  # generated here first, in this order
TOY = [
    "task.num_train=32",
    "task.num_val=8",
    "task.num_test=8",
    "optim.batch_size=8",
    "optim.steps=3",
    "optim.warmup_steps=1",
    "eval_every=2",
    "log_every=1",
    "model.d_model=32",  # the smallest that every mixer's head size allows
]  # and one layer per mixer of the run's pattern (run_config), so a pattern trains each of them
TOY_LENGTHS = {"listops": ["task.seq_len=64"]}  # tasks whose length a toy run shortens
GPU_MEMORY_GB = 80.0  # an H100's


@dataclasses.dataclass(frozen=True)
class Run:
    """``experiments/<folder>/<name>.toml`` with ``overrides`` (one point of an lr sweep, say),
    the published number it is set beside, and the GPU memory it is expected to need. ``folder``
    "" names a top-level experiment (``mqar_mom``: what ``seqzoo train mqar_mom`` trains);
    ``tag``, if given, stands for the overrides in ``key`` (for values that make a poor name,
    such as a JSON ``model.mixer_options``); ``init_from``, if given, is the key of the run
    whose latest checkpoint's variables this run starts from (``seqzoo train --init-from``)."""

    name: str
    paper: str
    memory_gb: float
    overrides: tuple[str, ...] = ()
    folder: str = "repro"
    tag: str = ""
    init_from: str = ""

    @property
    def experiment(self) -> str:
        """The experiment name ``load_experiment`` and ``seqzoo train`` take."""
        return f"{self.folder}/{self.name}" if self.folder else self.name

    @property
    def key(self) -> str:
        """The run's name for ``--only``, its directory and log: the config's name, then the
        tag or each override's last key and value, ``mqar_attention_d64@lr=0.000464``."""
        if self.tag:
            return f"{self.name}@{self.tag}"
        parts = [self.name]
        for override in self.overrides:
            dotted, value = override.split("=", 1)
            parts.append(f"{dotted.rsplit('.', 1)[-1]}={value}")
        return "@".join(parts)

    @property
    def memory_fraction(self) -> float:
        """XLA_CLIENT_MEM_FRACTION: a cap of 1.5 times the expected peak plus 2 GB (the CPU
        estimate ran 1 GB short for the MQAR runs on the H100, 2026-11-23), and at most 60%: no
        run may take the whole GPU. Each process's allocator takes its cap at start, so a group's
        caps must add up to less than the GPU (tests/test_repro.py): with twice the peak plus 4 GB,
        two runs of an lr sweep ran out of memory on 2026-11-23. The cap is preallocated because
        an allocator that grows on demand fragmented it: MQAR d 64 runs (attention, linear
        attention, H3) capped at 8.9-11.75 GB failed to find the 4.3 GiB of their train step in
        a mostly free pool (H100, 2026-12-06)."""
        return min(1.5 * self.memory_gb + 2.0, 0.6 * GPU_MEMORY_GB) / GPU_MEMORY_GB


HARD_MQAR = ("task.num_kv_pairs=32", "task.seq_len=128", "task.vocab_size=256")  # issue 27's
MOM = "MoM > its single memory (Du et al. 2025)"
JRT = "JRT-Prompt (context twice) > once, Based at a fixed state (Arora et al. 2024, JRT)"
JRT_PROMPT = "JRT-Prompt (pairs + 2 of 8 queries twice) > once, Based, fixed state (JRT s3.2)"
# issue 27's first JRT rows: the pairs twice, then every key queried (mqar_jrt_based.toml
# now holds the paper's layout, the whole prompt twice with 2 of the 8 keys queried)
CONTEXT_ONLY = ("task.repeat_scope=context", "task.num_queries=0")
# the paper's layout on and off (explicit, so the run keys say which): the same scored rows
JRT_ON = ("task.repeat_scope=prompt", "task.num_queries=2")
JRT_OFF = ("task.context_repeats=1", "task.seq_len=64", "task.num_queries=2")
# issue 27's JRT runs with BaseConv first, as every official JRT / Based setup
# (mqar_jrt_based_conv.toml, mqar_jrt_rnn_conv_hard.toml): 64 pairs, 16 of them queried, where
# feature_dim 4 binds a single read (CPU, 2026-12-06: 41.5% read once at 1500 steps, 100% with
# feature_dim 16). Read once: the same scored rows, one copy; every key queried: JRT-RNN
# against Based without JRT-Prompt (the paper's MQAR comparison at the decoder's state)
JRT_CONV_PROMPT = "JRT-Prompt (64 pairs + 16 queries twice) > once, BaseConv+Based (JRT s3.2)"
JRT_CONV_RNN = "JRT-RNN > Based at the decoder's state, BaseConv first (JRT s4)"
JRT_CONV_ONCE = ("task.context_repeats=1", "task.seq_len=160")
JRT_DEEP = ("model.n_layers=4",)  # two recall layers: BaseConv, Based, BaseConv, Based
# every key queried: the pairs fill half the row, and the vocabulary must exceed the length
JRT_CONV_ALL = ("task.num_queries=0", "task.seq_len=256", "task.vocab_size=512")


def gpu_memory_needed(runs) -> float:
    """GB that ``runs`` at once take on the GPU: their allocators' caps (``Run.memory_fraction``,
    preallocated) and a CUDA context of about 0.6 GB per process. Groups and ``--only``
    selections must stay within 95% of ``GPU_MEMORY_GB``: 19 runs whose caps added to 131 GB
    all failed at start, out of memory (H100, 2026-12-06)."""
    return sum(run.memory_fraction * GPU_MEMORY_GB + 0.6 for run in runs)


def seeds(run: Run, *values: int) -> tuple[Run, ...]:
    """``run`` once per training seed (``seed=S`` after its overrides)."""
    return tuple(dataclasses.replace(run, overrides=(*run.overrides, f"seed={s}")) for s in values)


GROUPS = {  # each fits one call on an H100 (memory: tests/test_repro.py); --group picks one
    "lra": (
        Run("listops_s4d", "S4 59.60 (LRA, 40 epochs); target >= 55", 8.0),
        Run("listops_transformer", "36.37 (LRA Transformer)", 17.0),
        Run("sfashion_mnist_s4d", "target >= 88", 2.1),
        Run("pathfinder_s4d", "S4 94.20 (200 epochs); target >= 80", 4.1),
        Run("pathfinder_transformer", "71.40 (LRA Transformer)", 10.3),
    ),
    "pathfinder": (  # S4's batch norm (calls A, I, J had layer norm and stayed at chance)
        Run("pathfinder_s4d", "S4 94.20 (200 epochs); target >= 80", 4.1),
        # a check that the data can be learnt at all: the easiest difficulty, 6-paddle snakes
        Run("pathfinder_s4d", "diagnostic: no published number", 4.1, (
            "task.difficulty=curv_baseline", "task.num_train=64000", "task.num_val=2000",
            "task.num_test=2000")),
        Run("pathfinder_transformer", "71.40 (LRA Transformer)", 10.3),
    ),
    "pathfinder_long": (  # 50 epochs over several calls: --save-state, then --resume-from
        Run("pathfinder_s4d", "S4 94.20 (200 epochs); target >= 80", 4.1, ("optim.steps=125000",)),
        Run("pathfinder_s4d", "diagnostic: no published number", 4.1, (
            "task.difficulty=curv_baseline", "task.num_train=64000", "task.num_val=2000",
            "task.num_test=2000", "optim.steps=50000")),
    ),
    # after pathfinder_long (H100, 2026-12-06): contour 14 sat at chance for 45k steps while
    # curv_baseline learnt (92.7% val) without carrying over to contour 14 (48% zero-shot).
    # Does the middle difficulty learn from scratch, and does S4's own Pathfinder config
    # (state-spaces/s4 configs/experiment/lra/s4-pathfinder.yaml: S4 with the NPLR LegS kernel,
    # d_model 256, 50k warmup steps of a 500k-step cosine; 1.29M parameters, train step 1.49
    # GiB on a CPU against 0.88 for pathfinder_s4d) leave chance at contour 14?
    "pathfinder_next": (
        Run("pathfinder_s4d", "diagnostic: LRA reports contour 14 only", 4.1, (
            "task.difficulty=curv_contour_length_9", "optim.steps=50000")),
        Run("pathfinder_s4d", "S4 94.20 (its config, 200 epochs); target >= 80", 6.9, (
            "model.mixer=s4_bidirectional", "model.d_model=256", "optim.warmup_steps=50000",
            "optim.steps=500000"), tag="s4_official"),
    ),
    # a curriculum: contour 14 from the trained contour-9 model. From scratch, contour 14 sat
    # at chance for 45k steps (pathfinder_long), while contour 9 left chance after ~12k steps
    # and reached 92.9% test at 38k steps (pathfinder_next, H200): start contour 14 there.
    # Needs the contour-9 run's directory in --work or its state in --resume-from
    "pathfinder_curriculum": (
        Run("pathfinder_s4d", "S4 94.20 (200 epochs); target >= 80", 4.1, (
            "task.difficulty=curv_contour_length_14", "optim.steps=50000"),
            init_from="pathfinder_s4d@difficulty=curv_contour_length_9@steps=50000"),
    ),
    # the curriculum's second training seed: contour 9 from scratch (one call), then contour 14
    # from it (the next call, --resume-from the first's state)
    "pathfinder_contour9_seed1": (
        Run("pathfinder_s4d", "diagnostic: LRA reports contour 14 only", 4.1, (
            "task.difficulty=curv_contour_length_9", "optim.steps=50000", "seed=1")),
    ),
    "pathfinder_curriculum_seed1": (
        Run("pathfinder_s4d", "S4 94.20 (200 epochs); target >= 80", 4.1, (
            "task.difficulty=curv_contour_length_14", "optim.steps=50000", "seed=1"),
            init_from="pathfinder_s4d@difficulty=curv_contour_length_9@steps=50000@seed=1"),
    ),
    "listops_more": (
        Run("listops_mamba", "S4 59.60, Transformer 36.37 (LRA)", 12.0),
        Run("listops_rat", "S4 59.60, Transformer 36.37 (LRA)", 8.0),
        Run("listops_linear_attention", "16.13 (LRA Linear Transformer)", 5.7),
    ),
    "listops_hydra": (  # at the config's lr 0.01 Hydra stays at the majority class (call J)
        Run("listops_hydra", "S4 59.60, Transformer 36.37 (LRA)", 23.0, ("optim.lr=0.001",)),
        Run("listops_hydra", "S4 59.60, Transformer 36.37 (LRA)", 23.0, ("optim.lr=0.003",)),
    ),
    "mqar_d64": (  # attention: at 4.7 GB (9 GB cap) out of memory on 2026-12-05 (4.25 GiB step)
        Run("mqar_attention_d64", "~100 (Zoology fig. 2)", 6.5),
        # the rest of Zoology's lr sweep, logspace(-4, -2, 4), for attention (configs: 2.15e-3)
        Run("mqar_attention_d64", "~100 (Zoology fig. 2)", 6.5, ("optim.lr=0.000464",)),
        Run("mqar_attention_d64", "~100 (Zoology fig. 2)", 6.5, ("optim.lr=0.01",)),
        Run("mqar_based_d64", "below attention (Zoology)", 9.2),
        Run("mqar_linear_attention_d64", "below attention (Zoology)", 4.8),
        Run("mqar_h3_d64", "far below attention at d_model 64 (Zoology)", 4.6),
    ),
    "mqar_d64_ssm": (
        Run("mqar_mamba_d64", "below attention (Zoology)", 16.0),
        Run("mqar_hydra_d64", "not in Zoology", 9.0),
    ),
    "mqar_d128": (
        Run("mqar_attention_d128", "~100 (Zoology fig. 2)", 8.0),
        Run("mqar_based_d128", "below attention (Zoology)", 9.7),
        Run("mqar_mamba_d128", "below attention (Zoology)", 20.0),
        Run("mqar_h3_d128", "below attention (Zoology)", 5.1),
    ),
    "selective": (
        Run("selective_copying_mamba", "99.8 at length 4096 (Mamba table 1)", 3.6),
        Run("selective_copying_s4d", "S4 18.3 at length 4096 (Mamba table 1)", 0.3),
        Run("induction_heads_mamba", "100 at 16x and beyond (Mamba table 2)", 6.0),  # at 4097
        Run("induction_heads_s4d", "fails beyond the training length", 0.3),
        Run("induction_heads_h3", "fails beyond the training length (Mamba table 2)", 0.4),
        # Mamba with 5x / 2x the steps: a call of its own
        Run("selective_copying_mamba", "99.8 at length 4096 (Mamba table 1)", 3.6,
            ("optim.steps=15000",)),
        Run("induction_heads_mamba", "100 at 16x and beyond (Mamba table 2)", 6.0,
            ("optim.steps=12000",)),
    ),
    "seeds": (  # training seed 1 (init, dropout, batch order; same data) of the headline rows
        Run("selective_copying_mamba", "99.8 at length 4096 (Mamba table 1)", 3.6,
            ("optim.steps=15000", "seed=1")),
        Run("induction_heads_mamba", "100 at 16x and beyond (Mamba table 2)", 6.0,
            ("optim.steps=12000", "seed=1")),
        Run("mqar_attention_d64", "~100 (Zoology fig. 2)", 6.5, ("seed=1",)),
        Run("mqar_attention_d128", "~100 (Zoology fig. 2)", 8.0, ("seed=1",)),
        Run("sfashion_mnist_s4d", "target >= 88", 2.1, ("seed=1",)),
    ),
    "seeds2": (  # the rest of the headline rows' seed 1
        Run("listops_s4d", "S4 59.60 (LRA, 40 epochs); target >= 55", 8.0, ("seed=1",)),
        Run("listops_transformer", "36.37 (LRA Transformer)", 17.0, ("seed=1",)),
        Run("mqar_attention_d64", "~100 (Zoology fig. 2)", 6.5, ("seed=1",)),
    ),
    "seeds_mqar_order": (
        Run("mqar_based_d64", "below attention (Zoology)", 9.2, ("seed=1",)),
        Run("mqar_linear_attention_d64", "below attention (Zoology)", 4.8, ("seed=1",)),
        Run("mqar_mamba_d64", "below attention (Zoology)", 16.0, ("seed=1",)),
        Run("mqar_h3_d64", "far below attention at d_model 64 (Zoology)", 4.6, ("seed=1",)),
    ),
    # issue 27 (top-level experiments, as `seqzoo train NAME`): MoM against its single memory
    # on the hard and the default MQAR, JRT-Prompt on and off, JRT-RNN, the delta rule beside GLA
    # and Mamba-2 on the hard MQAR (memory: the train step's temporaries, 0.02-0.19 GB on a CPU,
    # rounded up to 0.1 GB; 2026-12-06). The JRT and Based runs need far more steps: over several
    # calls, --save-state (states packed where one file per run would pass OUT's 8 files)
    "issue27": (
        *seeds(Run("mqar_mom", MOM, 0.2, ("optim.steps=3000", *HARD_MQAR), folder=""), 0, 1),
        *seeds(Run("mqar_mom_single", MOM, 0.1, ("optim.steps=3000", *HARD_MQAR), folder=""), 0, 1),
        *seeds(Run("mqar_mom", MOM, 0.1, ("optim.steps=3000",), folder=""), 0),
        *seeds(Run("mqar_mom_single", MOM, 0.1, ("optim.steps=3000",), folder=""), 0),
        *(Run("mqar_jrt_based", JRT, 0.1, ("optim.steps=4000", *layout, *CONTEXT_ONLY, f"seed={s}"),
              folder="", tag=f"steps=4000{key}@seed={s}")  # the keys (run directories) it had
          for key, layout in (("", ("task.seq_len=80",)),
                              ("@context_repeats=1@seq_len=64",
                               ("task.context_repeats=1", "task.seq_len=64")))
          for s in (0, 1)),
        *seeds(Run("mqar_jrt_rnn", "JRT-RNN > Based at the decoder's state (Arora et al. 2024)",
                   0.1, ("optim.steps=4000",), folder=""), 0),
        *(Run(f"mqar_{mixer}", claim, 0.1, ("optim.steps=3000", *HARD_MQAR, "seed=0"), folder="")
          for mixer, claim in (
              ("deltanet", "DeltaNet recalls on MQAR (Yang et al. 2024)"),
              ("gated_deltanet", "Gated DeltaNet >= DeltaNet (Yang, Kautz & Hatamizadeh 2025)"),
              ("gla", "GLA below the delta rule on MQAR (Yang et al. 2024)"))),
        Run("mqar_mamba", "Mamba-2 beside the delta rule (Yang et al. 2025)", 0.2,
            ("model.mixer=mamba2", "optim.steps=3000", *HARD_MQAR, "seed=0"), folder=""),
    ),
    # issue 27, the runs the H200 results of 2026-12-06 ask for next: MoM against its single
    # memory with both memories' output gate off (the official gate keeps a single Gated
    # DeltaNet at chance at this size: experiments/mqar_gated_deltanet.toml), seeds 0 and 1
    "issue27_no_gate": tuple(
        Run(name, MOM, 0.2, (f"model.mixer_options={options}", "optim.steps=3000", *HARD_MQAR,
                             f"seed={s}"), folder="", tag=f"no_gate@hard@seed={s}")
        for name, options in (
            ("mqar_mom", '{"num_heads":2,"head_dim":16,"num_memories":4,"topk":2,'
                         '"use_gate":false}'),
            ("mqar_mom_single", '{"num_heads":2,"head_dim":16,"expand_v":1.0,"use_gate":false}'))
        for s in (0, 1)
    ),
    # Based's recall against state size (Arora et al. 2024, fig. 2; experiments/based_tradeoff.py
    # --from-runs draws it from these runs' directories; memory: 0.14 GB on a CPU)
    "based_tradeoff": tuple(
        Run(RECIPE, "recall rises with state along each window (Based fig. 2)", 0.2,
            (point_override(window, f), "optim.steps=1500"), folder="", tag=f"w{window}_f{f}")
        for window in (4, 8, 16, 32) for f in (4, 16)
    ),
    # issue 27's JRT-Prompt and Based claims run towards convergence: the 4000- and 1500-step
    # runs above were still learning. Each group is 4 runs (--save-state keeps at most 5), over
    # several calls: --save-state, then --resume-from the call's state archive. JRT-Prompt in the
    # paper's layout (mqar_jrt_based.toml: pairs and queries twice, 2 of 8 keys queried, only the
    # second copy scored) against the same rows read once (the scored questions are the same)
    "jrt_long": (
        *seeds(Run("mqar_jrt_based", JRT_PROMPT, 0.1, ("optim.steps=24000", *JRT_ON),
                   folder=""), 0, 1),
        *seeds(Run("mqar_jrt_based", JRT_PROMPT, 0.1, ("optim.steps=24000", *JRT_OFF),
                   folder=""), 0, 1),
    ),
    # issue 27's JRT claims with the official short convolution: JRT-Prompt on and off,
    # JRT-RNN against Based on the same rows, then with every key queried (memory: the train
    # step on a CPU, benchmarks/memory_configs.py, 2026-12-06: 0.23 GB read twice at length
    # 320, 0.09 JRT-RNN at 160; the every-key runs at 256 rounded up to 0.2)
    "jrt_conv": (
        *seeds(Run("mqar_jrt_based_conv", JRT_CONV_PROMPT, 0.3, ("optim.steps=12000",),
                   folder=""), 0, 1),
        *seeds(Run("mqar_jrt_based_conv", JRT_CONV_PROMPT, 0.1,
                   ("optim.steps=12000", *JRT_CONV_ONCE), folder=""), 0, 1),
        *seeds(Run("mqar_jrt_rnn_conv_hard", JRT_CONV_RNN, 0.1, ("optim.steps=12000",),
                   folder=""), 0, 1),
        *seeds(Run("mqar_jrt_rnn_conv_hard", JRT_CONV_RNN, 0.2,
                   ("optim.steps=12000", *JRT_CONV_ALL), folder=""), 0, 1),
        *seeds(Run("mqar_jrt_based_conv", JRT_CONV_RNN, 0.2,
                   ("optim.steps=12000", *JRT_CONV_ONCE[:1], *JRT_CONV_ALL), folder=""), 0, 1),
    ),
    # JRT-Prompt with two recall layers (BaseConv, Based, BaseConv, Based): with one linear-
    # attention layer the second read cannot help (its state is a sum over the tokens, the same
    # terms again), so selective storage on the second read needs a layer before the storing one
    # that has seen the queries (memory: 2 x jrt_conv's per layer)
    "jrt_deep": tuple(
        Run("mqar_jrt_based_conv", JRT_CONV_PROMPT, memory,
            ("optim.steps=12000", *JRT_DEEP, *once, f"seed={s}"), folder="",
            tag=f"l4{name}@steps=12000@seed={s}")
        for name, once, memory in (("", (), 0.5), ("_once", JRT_CONV_ONCE, 0.2)) for s in (0, 1)
    ),
    **{f"based_tradeoff_long_{part}": tuple(
        Run(RECIPE, "recall rises with state along each window (Based fig. 2)", 0.2,
            (point_override(window, f), "optim.steps=12000"), folder="",
            tag=f"w{window}_f{f}@steps=12000")
        for window in windows for f in (4, 16)
    ) for part, windows in (("a", (4, 8)), ("b", (16, 32)))},
}
# The three groups above in one call (with --save-state their states travel in one pack): 12
# tiny models (the H200 call of 2026-12-06 ran 23 such runs at once, 4000 steps in 222-336 s)
GROUPS["issue27_long"] = (*GROUPS["jrt_long"], *GROUPS["based_tradeoff_long_a"],
                          *GROUPS["based_tradeoff_long_b"])
# Based's recall against state size in the paper's own setup (experiments/mqar_based_fig2.toml;
# `experiments/based_tradeoff.py --preset fig2 --from-runs WORK/runs` draws it). Source:
# HazyResearch/zoology zoology/experiments/paper_configs/arxiv24_based_figure2/configs.py at
# d88d6f5 (= arxiv24_based_figure1/configs.py at eac8015f, the commit HazyResearch/based pins):
# 2 layers BaseConv + Based (Taylor, 1 head), no MLP, vocab 8192, batch 256, d_model
# {48, 64, 128} x feature_dim {8, 16, 24}, all nine points here. Differences (based_tradeoff.py's
# docstring says why): one training and test segment, the paper's hardest (length 256,
# 64 pairs) instead of its mixture; one lr (3.16e-3) instead of the best of logspace(-3, -1.5,
# 4); 6000 steps instead of ~22.5k (32 epochs). One group per d_model, 3 runs a call: a run of
# this shape (mqar_based_d64) did 4473 steps in 493 s sharing the H100 with 7 others.
# Memory: the compiled train step's peak on a CPU (seqzoo.runner.memory.step_memory, as
# benchmarks/memory_configs.py) is 4.23-4.24 GB at d 48, 4.30-4.31 at d 64, 4.60-4.61 at d 128
# (eval 2.03-2.07; 2026-12-06), plus the 1 GB the CPU ran short for MQAR on the H100 and a
# margin: 6.5 GB as mqar_attention_d64 (4.25 GiB step), 7.0 at d 128 (caps 11.75 / 12.5 GB).
# based_fig2_swa: the figure's sliding-window attention beside Based (BaseConv then 1-head
# attention over the last w tokens, no RoPE, d_model 128; the paper's windows 8 to 1024, here
# those below the length, 8 to 128), 4.63 GB on the CPU: 7.0 GB, 5 runs in 65.5 GB of caps
GROUPS.update({f"based_fig2_d{d_model}": tuple(
    Run(FIG2, "accuracy rises with state: d_model and feature_dim (Based fig. 2)", memory,
        (*fig2_overrides(d_model, f), "optim.steps=6000"), folder="",
        tag=f"d{d_model}_f{f}@steps=6000")
    for f in (8, 16, 24)
) for d_model, memory in ((48, 6.5), (64, 6.5), (128, 7.0))})
GROUPS["based_fig2_swa"] = tuple(
    Run(FIG2, "sliding window: accuracy rises with the window, below Based (Based fig. 2)", 7.0,
        (*fig2_swa_overrides(window), "optim.steps=6000"), folder="",
        tag=f"swa_w{window}@steps=6000")
    for window in (8, 16, 32, 64, 128)
)
ALL_RUNS = tuple(dict.fromkeys(run for group in GROUPS.values() for run in group))  # each once
HEADER = (
    "| task | model | params | steps (of planned) | wall s | device | test acc | best val acc "
    "| test acc at best val (step) | paper | command |\n" + "|---" * 11 + "|\n"
)


@dataclasses.dataclass
class Launched:
    """A run started as a subprocess: its plan, config, command and log."""

    run: Run
    cfg: ExperimentConfig
    command: list[str]
    process: subprocess.Popen
    log: Path
    killed: bool = False


def run_config(run: Run, toy: bool, data_dir: Path) -> tuple[ExperimentConfig, list[str]]:
    """The run's config and the overrides it gets on the command line (toy sizes, data)."""
    cfg = apply_overrides(load_experiment(run.experiment), run.overrides)
    extra = []
    if toy:
        layers = len(cfg.model.mixer.split(","))
        extra += [*TOY, f"model.n_layers={layers}", *TOY_LENGTHS.get(cfg.task.name, [])]
    if cfg.task.name == "sfashion_mnist" and (data_dir / "fashion-mnist").is_dir():
        extra.append(f"task.data_dir={data_dir / 'fashion-mnist'}")
    return apply_overrides(cfg, extra), [*run.overrides, *extra]


def train_command(run: Run, overrides, run_dir: Path, minutes: float, resume: bool = False,
                  init: Path | None = None) -> list[str]:
    """``seqzoo train`` of ``run`` in ``run_dir`` for ``minutes``, from the variables of the run
    directory ``init`` if given; with ``resume``, continuing ``run_dir`` instead (from its own
    checkpoint: ``init`` is not applied again), keeping the overrides a resume may change."""
    if resume:
        kept = [o for o in overrides if o.split("=", 1)[0] in RESUMABLE]
        start = [*kept, f"max_minutes={minutes:.2f}", "--resume", "--run-dir", str(run_dir)]
    else:
        start = [run.experiment, *overrides, f"max_minutes={minutes:.2f}", "--run-dir",
                 str(run_dir), "--overwrite", *(["--init-from", str(init)] if init else [])]
    return [sys.executable, "-m", "seqzoo.cli", "train", *start, "--no-progress"]


def launch(run: Run, cfg, overrides, work: Path, train_deadline: float, env,
           resume: bool = False, init: Path | None = None) -> Launched:
    """Start ``train_command`` for ``run`` with the minutes left until ``train_deadline``; with
    ``resume``, continue its run directory (unpacked by ``unpack_state``) instead."""
    minutes = max(train_deadline - time.time(), 1.0) / 60
    run_dir, log = work / "runs" / run.key, work / "logs" / f"{run.key}.log"
    command = train_command(run, overrides, run_dir, minutes, resume, init)
    run_env = {**env, "XLA_CLIENT_MEM_FRACTION": f"{run.memory_fraction:.3f}"}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=run_env, stdout=out, stderr=subprocess.STDOUT
        )
    verb = "resumed" if resume else "started"
    print(f"[{time.strftime('%H:%M:%S')}] {verb} {run.key} ({minutes:.2f} min)", flush=True)
    return Launched(run, cfg, command, process, log)


def state_file(key: str) -> str:
    """The name of a run's state archive: its key with what the device tool refuses in file
    names (anything but letters, digits, '.', '_', '-') as '_'."""
    return "state_" + re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".tar.gz"


def _steps(folder: Path) -> list[int]:
    """The checkpoint steps saved in ``folder`` (a checkpoint manager's directory), sorted."""
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if \
        folder.is_dir() else []


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of ``run_dir``'s periodic checkpoints, in order (none if there is no run)."""
    return _steps(run_dir / LATEST)


def save_state(run_dir: Path, key: str, out: Path) -> Path:
    """``out/state_<key>.tar.gz``: ``run_dir`` as the folder ``key``, without its older
    periodic checkpoints, the best checkpoints a resume from the newest one does not use (it
    keeps the newest best at or before that step, and drops later ones), its lock and its
    set-aside checkpoints."""
    steps = checkpoint_steps(run_dir)
    bests = _steps(run_dir / BEST)
    needed = best_needed(bests, steps[-1:])
    older = {f"{LATEST}/{step}" for step in steps[:-1]} | {
        f"{BEST}/{step}" for step in bests if step not in needed}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        inner = "/".join(Path(info.name).parts[1:3])
        return None if inner in older or inner.split("/")[0] in ("lock", "skipped") else info

    path = out / state_file(key)
    with tarfile.open(path, "w:gz") as archive:
        archive.add(run_dir, arcname=key, filter=keep)
    return path


OUT_FILES = 8  # what the device tool returns from OUT (files past it are dropped, silently)
PACK_BYTES = 15 * 2**20  # ... in files of at most 16 MiB each (larger ones are dropped too)
FIXED_FILES = 2  # results.md and runs.tar.gz; then one curves_<task>.png per task, then states


@dataclasses.dataclass(frozen=True)
class State:
    """A run's state archive as ``plan_states`` weighs it: its size in bytes and whether the run
    reached its planned steps (a run that did not needs its state to continue)."""

    key: str
    size: int
    finished: bool


def _first_fit(sizes: list[int]) -> list[list[int]]:
    """Indices of ``sizes`` in packs of at most ``PACK_BYTES`` (first fit, in order; one larger
    than that alone in its pack)."""
    packs: list[list[int]] = []
    used: list[int] = []
    for i, size in enumerate(sizes):
        fit = next((j for j, total in enumerate(used) if total + size <= PACK_BYTES), None)
        if fit is None:
            packs.append([i])
            used.append(size)
        else:
            packs[fit].append(i)
            used[fit] += size
    return packs


def _parts(size: int) -> int:
    """Files an archive of ``size`` bytes takes when it is larger than ``PACK_BYTES``
    (``split_large``)."""
    return -(-size // PACK_BYTES)


def state_files(sizes: list[int], slots: int) -> int:
    """Files of OUT that state archives of ``sizes`` take, laid out as ``place_states`` does:
    each larger than ``PACK_BYTES`` in its parts; the others one file each where that fits in
    ``slots`` files, else in first-fit packs (``pack_states``)."""
    large = sum(_parts(size) for size in sizes if size > PACK_BYTES)
    small = [size for size in sizes if size <= PACK_BYTES]
    if large + len(small) <= slots:
        return large + len(small)
    return large + len(_first_fit(small))


def plan_states(states: list[State], slots: int) -> tuple[list[State], list[State]]:
    """The states that travel in ``slots`` files of OUT, and those that do not. Priority: the
    runs that did not reach their planned steps, then the finished ones, each class in the
    order given (the runs' selection order); in that order each state is kept if it fits beside
    those kept before it (``state_files``), else left out whole: never some of its parts. A
    smaller state after one left out may still fit."""
    kept: list[State] = []
    for state in [s for s in states if not s.finished] + [s for s in states if s.finished]:
        if state_files([s.size for s in (*kept, state)], slots) <= slots:
            kept.append(state)
    dropped = [s for s in states if s not in kept]
    return kept, dropped


def dropped_note(state: State, out_files: int) -> str:
    """What the table and stdout say of a state ``plan_states`` left out."""
    note = (f"state of {state.key} ({state.size / 2**20:.1f} MiB) not returned: OUT holds "
            f"{out_files} files; to keep it, run `--only {state.key} --save-state` in a call of "
            "its own")
    alone = out_files - FIXED_FILES - 1  # beside the table, the archive and its curve
    if _parts(state.size) > alone:
        note += (f" (even alone it needs {_parts(state.size)} files of {PACK_BYTES / 2**20:.0f} "
                 f"MiB, more than the {alone} OUT has left)")
    return note


def pack_states(archives: list[Path], out: Path) -> list[Path]:
    """Move the state archives into ``out/states_<i>.tar`` packs of at most ``PACK_BYTES`` each
    (first fit, in order; an archive larger than that alone in its pack); returns the packs."""
    packs = [[archives[i] for i in pack] for pack in _first_fit([a.stat().st_size
                                                                  for a in archives])]
    paths = []
    for i, members in enumerate(packs, 1):
        paths.append(out / f"states_{i}.tar")
        with tarfile.open(paths[-1], "w") as pack:
            for archive in members:
                pack.add(archive, arcname=archive.name)
        for archive in members:
            archive.unlink()
    return paths


def place_states(kept: list[tuple[State, Path]], out: Path, slots: int) -> list[Path]:
    """Move the archives ``plan_states`` kept (in its order) into ``out``: each larger than
    ``PACK_BYTES`` cut into parts, the others loose where one file each fits in ``slots``, else
    packed; returns the files written."""
    large = [path for state, path in kept if state.size > PACK_BYTES]
    small = [path for state, path in kept if state.size <= PACK_BYTES]
    placed = []
    for path in large:
        placed += split_large(Path(shutil.move(path, out / path.name)))
    moved = [Path(shutil.move(path, out / path.name)) for path in small]
    if len(placed) + len(moved) > slots:
        moved = pack_states(moved, out)
        print(f"states packed in {', '.join(p.name for p in moved)}", flush=True)
    return placed + moved


def split_large(archive: Path) -> list[Path]:
    """Cut an archive larger than ``PACK_BYTES`` into ``<name>.part<i>`` files of at most that
    size (the device tool returns no larger file), deleting it; a smaller one is returned as is.
    ``unpack_state`` joins the parts again."""
    size = archive.stat().st_size
    if size <= PACK_BYTES:
        return [archive]
    parts = []
    with archive.open("rb") as whole:
        for i in range(-(-size // PACK_BYTES)):
            parts.append(archive.with_name(f"{archive.name}.part{i}"))
            parts[-1].write_bytes(whole.read(PACK_BYTES))
    archive.unlink()
    return parts


def _joined_parts(source: Path, name: str, into: Path) -> Path | None:
    """``source/<name>.part0, .part1, ...`` joined as ``into/<name>``; None if there are none."""
    numbered = sorted((int(p.name.rsplit(".part", 1)[1]), p)
                      for p in source.glob(f"{glob.escape(name)}.part*"))
    if not numbered:
        return None
    if [i for i, _ in numbered] != list(range(len(numbered))):
        names = [p.name for _, p in numbered]
        raise ValueError(f"{source} holds parts {names} of {name}: one is missing")
    parts = [p for _, p in numbered]
    into.mkdir(parents=True, exist_ok=True)
    with (into / name).open("wb") as whole:
        for part in parts:
            whole.write(part.read_bytes())
    return into / name


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return archive.getnames()


def unpack_state(source: Path, key: str, work: Path) -> bool:
    """Unpack ``source/state_<key>.tar.gz`` (or its ``.part<i>`` files: ``split_large``), or that
    archive from a ``source/states_<i>.tar`` pack, into ``work/runs/<key>`` (replacing it);
    False if there is none; ``ValueError``, leaving ``work/runs/<key>`` as it was, if a part is
    missing or the archive is cut short (``_check_whole``) or holds another folder."""
    path = source / state_file(key)
    if not path.is_file():
        path = _joined_parts(source, state_file(key), work / "unpacked")
    if path is None:
        pack = next((p for p in sorted(source.glob("states_*.tar"))
                     if state_file(key) in _members(p)), None)
        if pack is None:
            return False
        path = work / "unpacked" / state_file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(pack) as archives:
            archives.extract(state_file(key), path.parent, filter="data")
    _check_whole(path)
    run_dir = work / "runs" / key
    with tarfile.open(path) as archive:
        names = archive.getnames()
        if any(Path(name).parts[0] != key or ".." in Path(name).parts for name in names):
            raise ValueError(f"{path} holds files outside the folder {key!r}")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        archive.extractall(work / "runs", filter="data")
    return True


def _check_whole(path: Path) -> None:
    """``ValueError`` unless the gzip stream ``path`` reads to its end with its checksum: a state
    of which only the first parts came back (``.part0`` of three, from a call before
    ``plan_states``) joins into a cut archive, which would unpack a partial run."""
    try:
        with gzip.open(path) as stream:
            while stream.read(2**22):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is incomplete or damaged ({e}): a part of it may be missing; "
                         "leave the run out or give its whole state") from e


def init_source(key: str, work: Path, resume_from: Path | None) -> Path | None:
    """The directory of the run ``key`` another run starts from: ``work/runs/<key>`` if it holds
    a checkpoint, else unpacked there from its state in ``resume_from``; None if neither has
    it."""
    run_dir = work / "runs" / key
    if checkpoint_steps(run_dir) or (resume_from and unpack_state(resume_from, key, work)):
        return run_dir
    return None


def starting_points(runs: list[Run], resumed: set[str], work: Path, resume_from: Path | None,
                    train_toy=None) -> dict[str, Path]:
    """``{key: run directory}`` of the source (``init_source``) of each run with ``init_from``,
    but those ``resumed`` (they continue from their own checkpoints). ``train_toy``: called
    with a source found nowhere (a toy launch trains it first), else ``ValueError`` naming
    where it was looked for; also if the source itself is among ``runs``."""
    by_key = {run.key: run for run in ALL_RUNS}
    points = {}
    for run in runs:
        source = run.init_from
        if not source or run.key in resumed:
            continue
        if source in {r.key for r in runs}:
            raise ValueError(f"{run.key} starts from {source}, which this call would train too: "
                             f"launch {source} in an earlier call")
        found = init_source(source, work, resume_from)
        if found is None and train_toy is not None:
            train_toy(by_key[source])
            found = init_source(source, work, resume_from)
        if found is None:
            where = f" nor {resume_from} a state of it ({state_file(source)}, as --save-state " \
                    f"writes it)" if resume_from else " (nor was a --resume-from DIR given)"
            raise ValueError(f"{run.key} starts from the run {source}, but neither "
                             f"{work / 'runs' / source} holds a checkpoint of it{where}")
        points[run.key] = found
    return points


def wait(launched: list[Launched], kill_deadline: float) -> None:
    """Wait for every run; kill those still running at ``kill_deadline``."""
    while any(item.process.poll() is None for item in launched):
        if time.time() >= kill_deadline:
            for item in launched:
                if item.process.poll() is None:
                    item.process.kill()
                    item.killed = True
                    print(f"killed {item.run.key} at the deadline", flush=True)
            break
        time.sleep(1.0)
    for item in launched:
        item.process.wait()


def _best_test_cell(summary: dict) -> str:
    """The test accuracy % at the best-validation checkpoint and its step (summaries from
    before it was recorded: empty)."""
    if summary.get("best_test_step") is None:
        return ""
    return f"{100 * summary['best_test_accuracy']:.2f} ({summary['best_test_step']})"


def row(item: Launched, work: Path, device: str) -> str:
    """The run's line of the results table."""
    cfg, run_dir = item.cfg, work / "runs" / item.run.key
    command = shlex.join(["python", *item.command[1:]])
    if (run_dir / SUMMARY_FILE).is_file():
        s = read_summary(run_dir)
        cells = [
            f"{s['params']:,}",
            f"{s['steps']} ({cfg.optim.steps})",
            f"{s['seconds']:.0f}",
            device,
            f"{100 * s['test_accuracy']:.2f}",
            f"{100 * s['best_val_accuracy']:.2f}",
            _best_test_cell(s),
        ]
    else:
        failed = f"failed (exit {item.process.returncode})"
        cells = ["", f"({cfg.optim.steps})", "", device, "killed" if item.killed else failed, "",
                 ""]
    task = cfg.task.name + (f", test at {cfg.task.test_seq_len}" if cfg.task.test_seq_len else "")
    shown = (item.run.tag,) if item.run.tag else item.run.overrides  # the command has them all
    model = cfg.model.mixer + "".join(f", {o}" for o in shown)
    cells = [task, model, *cells, item.run.paper, f"`{command}`"]
    return "| " + " | ".join(cells) + " |\n"


def device_name() -> str:
    """The accelerator the runs used (after they ended: this process starts its own client)."""
    import jax

    return jax.devices()[0].device_kind


def finished(item: Launched, work: Path) -> bool:
    """Whether the run reached its planned steps (its summary says so)."""
    run_dir = work / "runs" / item.run.key
    if not (run_dir / SUMMARY_FILE).is_file():
        return False
    return read_summary(run_dir)["steps"] >= item.cfg.optim.steps


def write_outputs(launched: list[Launched], work: Path, out: Path, state: bool,
                  out_files: int = OUT_FILES, selected: list[str] | None = None) -> None:
    """Print the table; write ``results.md``, ``runs.tar.gz``, with ``state`` the state of each
    run that ``plan_states`` fits in what is left of ``out_files`` (its archive, parts or pack:
    ``place_states``; the table and stdout name each left out), and ``curves_<task>.png`` (the
    most fragile last) in ``out``. The archives are made in ``work/outgoing`` first: OUT never
    holds more than ``out_files`` files. ``selected``: the run keys in the order the states
    are weighed (``--only``'s), else ``launched``'s (the group's)."""
    from seqzoo.runner.plot import plot_runs

    by_task: dict[str, list[Path]] = {}
    for item in launched:
        run_dir = work / "runs" / item.run.key
        if (run_dir / "metrics.jsonl").is_file():
            by_task.setdefault(item.cfg.task.name, []).append(run_dir)
    staged: list[tuple[State, Path]] = []
    if state:
        staging = work / "outgoing"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for item in launched:
            run_dir = work / "runs" / item.run.key
            if (run_dir / CONFIG_FILE).is_file():
                archive = save_state(run_dir, item.run.key, staging)
                staged.append((State(item.run.key, archive.stat().st_size,
                                     finished(item, work)), archive))
                print(f"state of {item.run.key}: {staged[-1][0].size / 2**20:.1f} MiB",
                      flush=True)
    if selected:
        staged.sort(key=lambda staged_state: selected.index(staged_state[0].key))
    slots = max(out_files - FIXED_FILES - len(by_task), 0)  # the table, archive and curves
    kept, dropped = plan_states([s for s, _ in staged], slots)
    notes = "".join(f"\n- {dropped_note(s, out_files)}" for s in dropped)
    device = device_name()
    table = HEADER + "".join(row(item, work, device) for item in launched)
    table += notes and f"\nWARNING, states left out:{notes}\n"
    print(table, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    with tarfile.open(out / "runs.tar.gz", "w:gz") as archive:
        archive.add(out / "results.md", arcname="results.md")
        for item in launched:
            run_dir = work / "runs" / item.run.key
            archive.add(item.log, arcname=f"{item.run.key}/train.log")
            for name in (CONFIG_FILE, SUMMARY_FILE, "metrics.jsonl"):
                if (run_dir / name).is_file():
                    archive.add(run_dir / name, arcname=f"{item.run.key}/{name}")
    place_states([(s, path) for s, path in staged if s in kept], out, slots)
    for _, path in staged:
        path.unlink(missing_ok=True)  # those left out
    for task, run_dirs in by_task.items():
        plot_runs(run_dirs, out / f"curves_{task}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="results (at most --out-files files)")
    parser.add_argument("--out-files", type=int, default=OUT_FILES, metavar="N",
                        help=f"files OUT may hold (default {OUT_FILES}, what the device tool "
                             "returns): less if you write files of your own there")
    parser.add_argument("--minutes", type=float, default=7.5, help="wall-clock budget (7.5)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seqzoo-repro"), help="run dirs")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".data", help="default .data")
    parser.add_argument("--group", choices=sorted(GROUPS), default="lra",
                        help="the runs of GROUPS[GROUP] (default lra)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="these runs instead, from every group (Run.key names)")
    parser.add_argument("--toy", action="store_true", help="tiny sizes: a CPU smoke run")
    parser.add_argument("--save-state", action="store_true",
                        help="also write each run's directory to OUT, to continue it later")
    parser.add_argument("--resume-from", type=Path, metavar="DIR",
                        help="continue the runs whose state_<key>.tar.gz is in DIR")
    args = parser.parse_args(argv)
    start = time.time()
    train_deadline = start + 60 * args.minutes - EVAL_RESERVE - COLLECT_RESERVE
    kill_deadline = start + 60 * args.minutes - COLLECT_RESERVE
    plan = ALL_RUNS if args.only else GROUPS[args.group]
    runs = [r for r in plan if not args.only or r.key in args.only]
    unknown = set(args.only or ()) - {r.key for r in plan}
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; known: {[r.key for r in plan]}")
    if not args.toy and gpu_memory_needed(runs) > 0.95 * GPU_MEMORY_GB:
        parser.error(f"these {len(runs)} runs need {gpu_memory_needed(runs):.1f} GB at once "
                     f"(caps and CUDA contexts), more than 95% of the {GPU_MEMORY_GB:.0f} GB "
                     "GPU: split them over calls")
    tasks = {load_experiment(run.experiment).task.name for run in runs}
    if args.save_state and len(tasks) + FIXED_FILES + 1 > args.out_files:
        parser.error(f"--save-state with {len(tasks)} curves, the table, the archive and a pack "
                     f"of states exceeds the {args.out_files} files OUT may hold")
    for folder in ("runs", "logs"):
        (args.work / folder).mkdir(parents=True, exist_ok=True)
    try:
        resumed = {run.key for run in runs
                   if args.resume_from and unpack_state(args.resume_from, run.key, args.work)}
    except ValueError as e:  # a state cut short, or holding another run's files
        parser.error(str(e))
    env = {  # jax refuses the old name of XLA_CLIENT_MEM_FRACTION beside the new one
        **{k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "true",  # the cap, in one pool (Run.memory_fraction)
    }
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # for this process's device_name()

    def train_toy(source: Run) -> None:  # a toy source, before the runs that start from it
        cfg, overrides = run_config(source, True, args.data_dir)
        wait([launch(source, cfg, overrides, args.work, train_deadline, env)], kill_deadline)

    try:
        inits = starting_points(runs, resumed, args.work, args.resume_from,
                                train_toy if args.toy else None)
    except ValueError as e:
        parser.error(str(e))
    planned = [(run, *run_config(run, args.toy, args.data_dir)) for run in runs]
    launched = [
        launch(run, cfg, overrides, args.work, train_deadline, env, run.key in resumed,
               inits.get(run.key))
        for run, cfg, overrides in planned
        if cfg.task.name not in CACHED_TASKS
    ]
    for task in CACHED_TASKS:
        waiting = [(run, cfg, o) for run, cfg, o in planned if cfg.task.name == task]
        for task_cfg in {cfg.task for _, cfg, _ in waiting}:
            began = time.time()
            try:
                build_task(task_cfg)  # into the data cache, on every core
            except Exception as e:  # its runs meet the error again and report it
                print(f"generating {task} data failed: {e!r}", flush=True)
            print(f"{task} data: {time.time() - began:.0f}s", flush=True)
        launched += [launch(*item, args.work, train_deadline, env, item[0].key in resumed,
                            inits.get(item[0].key)) for item in waiting]
    wait(launched, kill_deadline)
    launched.sort(key=lambda item: runs.index(item.run))
    write_outputs(launched, args.work, args.out, args.save_state, args.out_files, args.only)
    return 0 if all(item.process.returncode == 0 for item in launched) else 1


if __name__ == "__main__":
    sys.exit(main())

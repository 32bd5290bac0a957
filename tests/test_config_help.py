"""``seqzoo config show`` and the key list of ``seqzoo train --help`` (issue 22, item 6)."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from seqzoo.cli import main
from seqzoo.config import ExperimentConfig, apply_overrides, from_dict
from seqzoo.runner.experiments import load_experiment
from seqzoo.runner.resume import flat_config


def _lines(text: str) -> dict[str, str]:
    """``{section.key: its line}`` of ``config show`` output."""
    found, section = {}, ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]") + "."
        elif line and not line.startswith("#"):
            found[section + line.split(" = ")[0]] = line
    return found


def test_config_show_prints_every_key_with_type_default_and_origin(capsys):
    overrides = ["optim.lr=3e-3", "model.mixer_options={\"num_heads\": 4}"]
    assert main(["config", "show", "mqar_gla", *overrides]) == 0
    out = capsys.readouterr().out
    lines = _lines(out)
    cfg = apply_overrides(load_experiment("mqar_gla"), overrides)
    assert set(lines) == set(flat_config(cfg))  # every key, nothing else
    assert lines["optim.lr"].startswith("lr = 0.003 ")
    assert lines["optim.lr"].endswith("# float; default 0.01; >= 0; override")
    assert "# str; default \"attention\";" in lines["model.mixer"]
    assert lines["model.mixer"].endswith("experiment")  # set by experiments/mqar_gla.toml
    assert lines["model.mixer_options"].endswith("override")
    assert "# int; default 2; >= 1" in lines["model.n_layers"]  # the default: no origin
    assert "one of rms, layer, batch" in lines["model.norm"]
    assert "[optim]\n# AdamW" in out  # each section headed by its docstring
    assert from_dict(ExperimentConfig(), tomllib.loads(out)) == cfg  # TOML that reads back


@pytest.mark.parametrize(
    "argv, message",
    [
        (["smoke", "optim.lrr=1"],
         "unknown config key 'optim.lrr'; valid here: accumulate, b1, b2,"),
        (["smoke", "optim.lr=-1"], "optim.lr must be >= 0, got -1.0"),
        (["no_such_experiment"], "unknown experiment 'no_such_experiment'"),
        (["smoke", "stray"], "expected section.key=value overrides after the experiment"),
    ],
)
def test_config_show_refuses_unknown_keys_and_bad_values(argv, message, capsys):
    assert main(["config", "show", *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_train_help_lists_every_key_and_points_to_config_show(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse rewraps nothing: join lines
    assert "seqzoo config show EXPERIMENT [overrides]" in out
    for field in dataclasses.fields(ExperimentConfig):
        section = getattr(ExperimentConfig(), field.name)
        if dataclasses.is_dataclass(section):
            keys = " ".join(f.name for f in dataclasses.fields(section))
            assert f"{field.name}: {keys}" in out

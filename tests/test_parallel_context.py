"""The plumbing of sequence parallelism that needs no second device: the context switch and its jit
cache key, padding to shards, the runner's mesh checks and parameter shardings, and the clear
errors for what has no sequence-parallel path."""

from __future__ import annotations

import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from seqzoo.config import ExperimentConfig, MeshConfig, apply_overrides, from_dict, to_toml
from seqzoo.ops.attention import dot_product_attention
from seqzoo.ops.conv import causal_depthwise_conv
from seqzoo.ops.linear_attention import linear_attention
from seqzoo.parallel import pad_to_shards, padded_length, sequence_axis, sequence_parallel
from seqzoo.parallel.context import attention_scheme, carry_scheme
from seqzoo.runner.build import check_config
from seqzoo.runner.sharding import mesh_shape, pad_batch, state_shardings


def test_explicit_axis_wins_over_the_context_and_none_switches_it_off():
    assert sequence_axis() is None
    with sequence_parallel("seq"):
        assert sequence_axis() == "seq"
        assert sequence_axis("other") == "other"
        with sequence_parallel(None):
            assert sequence_axis() is None
        assert sequence_axis() == "seq"
    assert sequence_axis() is None


def test_the_exchange_schemes_default_nest_and_are_checked():
    assert (attention_scheme(), carry_scheme()) == ("ring", "all_gather")
    with sequence_parallel("seq", attention="ulysses", carry="all_scan"):
        assert (attention_scheme(), carry_scheme()) == ("ulysses", "all_scan")
        with sequence_parallel(None):
            assert (attention_scheme(), carry_scheme()) == ("ring", "all_gather")
        assert (attention_scheme(), carry_scheme()) == ("ulysses", "all_scan")
    with pytest.raises(ValueError, match="attention must be one of"):
        sequence_parallel("seq", attention="tree").__enter__()
    with pytest.raises(ValueError, match="carry must be one of"):
        sequence_parallel("seq", carry="ring").__enter__()


def test_ulysses_needs_shards_that_divide_the_heads():
    """Traced under a named vmap axis of 3 "shards": 4 heads do not split over them."""
    x = jnp.ones((3, 1, 2, 4, 8))

    def attend(x):
        with sequence_parallel("seq", attention="ulysses"):
            return dot_product_attention(x, x, x)

    with pytest.raises(ValueError, match="splits the 4 heads over the 3 sequence shards"):
        jax.eval_shape(jax.vmap(attend, axis_name="seq"), x)


def test_the_context_is_part_of_the_jit_cache_key():
    """A function jitted outside the context is traced again inside it (the layers' compiled
    ops would otherwise reuse a single-device trace)."""
    seen = []

    @jax.jit
    def f(x):
        seen.append(sequence_axis())
        return x + 1

    f(1.0)
    with sequence_parallel("seq"):
        f.lower(1.0)
    f(1.0)
    assert seen == [None, "seq"]


def test_padding_to_shards():
    assert [padded_length(n, 4) for n in (1, 4, 30, 32)] == [4, 4, 32, 32]
    x = np.arange(6).reshape(1, 6)
    np.testing.assert_array_equal(pad_to_shards(x, 4, value=-1), [[0, 1, 2, 3, 4, 5, -1, -1]])
    assert pad_to_shards(x, 3) is x
    assert isinstance(pad_to_shards(jnp.ones((1, 5)), 4), jax.Array)


def test_runner_pads_batches_with_invalid_ignored_positions():
    batch = {
        "inputs": np.ones((2, 6), np.int32),
        "mask": np.ones((2, 6), bool),
        "targets": np.ones((2,), np.int32),  # one label a row: no length axis
    }
    padded = pad_batch(batch, 4)
    assert padded["inputs"].shape == padded["mask"].shape == (2, 8)
    assert not padded["mask"][:, 6:].any() and (padded["inputs"][:, 6:] == 0).all()
    assert padded["targets"].shape == (2,)
    per_position = pad_batch({"targets": np.ones((2, 6), np.int32)}, 4)["targets"]
    assert (per_position[:, 6:] == -100).all()


@pytest.mark.parametrize(
    "mesh, message",
    [
        (MeshConfig(seq=3), "mesh.seq=3 does not divide the 8 devices"),
        (MeshConfig(data=4, seq=4), "needs 16 devices"),
        (MeshConfig(params="zero"), "mesh.params must be one of"),
        (MeshConfig(attention="tree"), "mesh.attention must be one of ring, ulysses"),
        (MeshConfig(carry="ring"), "mesh.carry must be one of all_gather, all_scan"),
    ],
)
def test_bad_meshes_name_the_keys(mesh, message):
    with pytest.raises(ValueError, match=message):
        mesh_shape(mesh, 8)


def test_mesh_shapes():
    assert mesh_shape(MeshConfig(), 8) == (8, 1)
    assert mesh_shape(MeshConfig(seq=4), 8) == (2, 4)
    assert mesh_shape(MeshConfig(data=1, seq=4), 8) == (1, 4)  # a subset of the devices


def test_mixers_without_a_sequence_parallel_path_are_refused(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    cfg = apply_overrides(ExperimentConfig(), ["model.mixer=mamba,s4d", "mesh.seq=4"])
    with pytest.raises(ValueError, match=r"mesh.seq=4 .* mixer\(s\) \['s4d'\]"):
        check_config(cfg)
    check_config(apply_overrides(ExperimentConfig(), ["model.mixer=mamba,hydra", "mesh.seq=4"]))


def test_the_batch_splits_over_the_data_axis_only(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    cfg = apply_overrides(ExperimentConfig(), ["optim.batch_size=4", "mesh.seq=4"])
    check_config(cfg)  # 4 rows over data=2
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        check_config(apply_overrides(cfg, ["optim.batch_size=3"]))


def test_mesh_section_round_trips_through_toml():
    cfg = apply_overrides(ExperimentConfig(), ["mesh.data=2", "mesh.seq=4", "mesh.params=fsdp"])
    assert from_dict(ExperimentConfig(), tomllib.loads(to_toml(cfg))) == cfg


def test_fsdp_shards_the_largest_dimension_the_devices_divide():
    mesh = AbstractMesh((2, 4), ("data", "seq"))
    tree = {"w": jnp.zeros((16, 40)), "b": jnp.zeros((40,)), "odd": jnp.zeros((3, 5))}
    specs = {k: s.spec for k, s in state_shardings(tree, mesh, "fsdp").items()}
    assert specs == {
        "w": PartitionSpec(None, ("data", "seq")),
        "b": PartitionSpec(("data", "seq")),
        "odd": PartitionSpec(),
    }
    replicated = state_shardings(tree, mesh, "replicated")
    assert all(s.spec == PartitionSpec() for s in jax.tree.leaves(replicated))


def test_what_has_no_sequence_parallel_path_says_so():
    x = jnp.ones((1, 8, 2, 4))
    with pytest.raises(NotImplementedError, match="segment_ids are not supported"):
        linear_attention(x, x, x, segment_ids=jnp.zeros((1, 8), int), seq_axis="seq")
    with pytest.raises(ValueError, match="a halo of 3 steps needs shards of at least"):
        causal_depthwise_conv(jnp.ones((1, 2, 3)), jnp.ones((4, 3)), seq_axis="seq")

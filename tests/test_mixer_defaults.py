"""Every registered mixer builds at a small ``d_model`` with its default options (head sizes
that the papers set for wide models shrink to one head there), keeps the paper's default at
normal widths, and names the option to change where the default does not fit."""

import jax
import jax.numpy as jnp
import pytest

from seqzoo.registry import get_mixer, list_mixers


@pytest.mark.parametrize("d_model", [16, 8])
@pytest.mark.parametrize("name", list_mixers())
def test_default_options_build_at_a_small_width(name, d_model):
    mixer = get_mixer(name, d_model=d_model)
    x, mask = jnp.ones((2, 8, d_model)), jnp.ones((2, 8), bool)
    params = jax.eval_shape(mixer.init, jax.random.PRNGKey(0), x, mask)
    y = jax.eval_shape(mixer.apply, params, x, mask)
    assert y.shape == x.shape


@pytest.mark.parametrize("name, option, heads", [
    ("hydra", "headdim", "nheads"), ("mamba2", "headdim", "nheads"), ("rat", "head_dim", "heads"),
    ("dense", "head_dim", "heads"),
])
def test_head_size_keeps_the_paper_default_where_it_fits(name, option, heads):
    split = 1 if name == "rat" else 2  # channels split into heads: d_model, or 2 * d_model
    for d_model, expected in ((256 // split, 4), (96 // split, None)):
        x = jnp.ones((1, 8, d_model))
        mixer = get_mixer(name, d_model=d_model)
        if expected is None:
            with pytest.raises(ValueError, match=f"{option}=64 \\(the default\\) must divide "
                                                 f"[^;]* = 96; set {option} to a divisor of "
                                                 f"96, e.g. 48 or 32"):
                mixer.init(jax.random.PRNGKey(0), x)
        else:  # heads of the paper's 64 channels
            count, _ = mixer.init_with_output(jax.random.PRNGKey(0), x,
                                              method=lambda m, _: getattr(m, heads))
            assert count == expected

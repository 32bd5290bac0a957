"""Flax mixers and blocks. Importing this package registers every mixer."""

from seqzoo.layers import attention  # noqa: F401, I001
from seqzoo.layers import linear_attention  # noqa: F401
from seqzoo.layers import structured  # noqa: F401
from seqzoo.layers import s4  # noqa: F401
from seqzoo.layers import h3  # noqa: F401
from seqzoo.layers import lmu  # noqa: F401
from seqzoo.layers import mamba  # noqa: F401
from seqzoo.layers import mamba2  # noqa: F401
from seqzoo.layers import hydra  # noqa: F401
from seqzoo.layers import rat  # noqa: F401
from seqzoo.layers import mega_ema  # noqa: F401
from seqzoo.layers import ponet  # noqa: F401
from seqzoo.layers import tcnca  # noqa: F401
from seqzoo.layers import hyena  # noqa: F401
from seqzoo.layers import aaren  # noqa: F401
from seqzoo.layers import rnn  # noqa: F401
from seqzoo.layers import fnet  # noqa: F401
from seqzoo.layers import delta_net  # noqa: F401
from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs

__all__ = ["MatrixMixer", "MixerInfo", "MixerInputs"]

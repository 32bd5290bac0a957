"""seqzoo: a sequence-model architecture zoo in JAX; every mixer is a structured matrix y = M x.

``seqzoo.get_mixer`` and the other registry functions load on first use (``seqzoo.registry``
imports every layer, and with them JAX and Flax), so ``import seqzoo`` and the CLI's start stay
quick.
"""

import importlib

__all__ = ["get_mixer", "list_mixers", "mixer_info", "register_mixer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("seqzoo.registry"), name)
    raise AttributeError(f"module 'seqzoo' has no attribute {name!r}")

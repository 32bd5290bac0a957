"""Flax mixers and blocks. Importing this package imports every module in it, so every mixer
registers itself (``seqzoo.layers.catalog.register_mixer``): a new mixer is one new file here,
with no list to extend."""

import importlib
import pkgutil

from seqzoo.layers.base import MatrixMixer, MixerInfo, MixerInputs

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MatrixMixer", "MixerInfo", "MixerInputs"]

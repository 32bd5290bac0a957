"""Data for seqzoo: seeded, cached task generators and loaders for released files.

Every task returns a :class:`Dataset` whose splits are dicts of numpy arrays ``inputs``
(n, l), ``targets`` (n,) or (n, l) with -100 where unlabelled, and ``mask`` (n, l).
"""

from seqzoo.data.dataset import IGNORE_INDEX, PAD_ID, Dataset
from seqzoo.data.listops import generate_listops
from seqzoo.data.lra_files import (
    load_lra_cifar10,
    load_lra_imdb,
    load_lra_listops,
    load_lra_pathfinder,
    load_lra_retrieval,
)
from seqzoo.data.mnist import load_fashion_mnist, load_mnist
from seqzoo.data.pathfinder import generate_pathfinder
from seqzoo.data.synthetic import associative_recall, induction_heads, mqar, selective_copying
from seqzoo.data.tfds_source import load_tfds

__all__ = [
    "IGNORE_INDEX",
    "PAD_ID",
    "Dataset",
    "associative_recall",
    "generate_listops",
    "generate_pathfinder",
    "induction_heads",
    "load_fashion_mnist",
    "load_lra_cifar10",
    "load_lra_imdb",
    "load_lra_listops",
    "load_lra_pathfinder",
    "load_lra_retrieval",
    "load_mnist",
    "load_tfds",
    "mqar",
    "selective_copying",
]

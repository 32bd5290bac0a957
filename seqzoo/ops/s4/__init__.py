"""S4's kernels and inits: the S4D (diagonal, ``s4d.py``) and S4 (DPLR, ``dplr.py``) convolution
kernels of a state-space model, and the HiPPO matrices and diagonal inits they start from
(``hippo.py``). The kernels are applied by the long convolutions of ``seqzoo.ops.conv``.
"""

from seqzoo.ops.s4.dplr import cauchy, conj_pairs, s4_dplr_c_tilde, s4_dplr_kernel
from seqzoo.ops.s4.hippo import NPLR_MEASURES, S4D_KINDS, hippo, nplr, rank_correction, s4d_init
from seqzoo.ops.s4.s4d import DISCRETISATIONS, s4d_kernel

__all__ = [
    "DISCRETISATIONS",
    "NPLR_MEASURES",
    "S4D_KINDS",
    "cauchy",
    "conj_pairs",
    "hippo",
    "nplr",
    "rank_correction",
    "s4_dplr_c_tilde",
    "s4_dplr_kernel",
    "s4d_init",
    "s4d_kernel",
]

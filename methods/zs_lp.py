"""ZS-LP: the zero-shot-initialised linear probe of the CLAP paper (CLAP's unconstrained setting, ``INIT=ZS
CONSTRAINT=none``, CL README:31-35, ``experiments/experiment_ZSLP.txt``): the same prototypes, views, SGD schedule
and last-epoch rule as ``clap`` (methods/clap.py), trained with cross-entropy only (no penalty, no λ).
"""

from bench.api import register_method
from .clap import CLAP


@register_method("zs_lp")
class ZSLP(CLAP):
    description = "ZS-LP: zero-shot-initialised prototypes trained with CE only (CLAP without its penalty)"
    display_name = "ZS-LP"
    color = "#CAB2D6"
    marker = "X"
    linestyle = ":"
    order = 151
    constrained = False

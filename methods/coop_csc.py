"""CoOp with class-specific contexts (CSC; docs/protocol.md §7): one (M, D) context per training class.

Same recipe and defaults as ``coop``.  A class-specific context exists only for the training classes, so it scores
those classes or any subset of them by name (ImageNet-A/R's 200 classes) and raises ``Unsupported`` otherwise
(new classes: hence no base-to-new / cross-dataset).  With ``ctx_init`` every class's context starts from the same
words (the reference ignores CSC when CTX_INIT is set).
"""

from bench.api import register_method
from .coop import CoOp


@register_method("coop_csc")
class CoOpCSC(CoOp):
    description = "CoOp, class-specific contexts (training classes and subsets of them only)"
    display_name = "CoOp (CSC)"
    color = "#E69F00"
    marker = "v"
    linestyle = "-"
    order = 25
    protocols = ("fewshot", "domain_shift")
    csc = True

"""MaPLe (Khattak et al., CVPR 2023; ``multimodal-prompt-learning:trainers/maple.py``).

2 text tokens (initialised from "a photo" of "a photo of a <name>.") at the input and N(0, 0.02²) deep text
tokens at layers 1 .. depth-1; the vision tokens of each layer are a Linear(text width -> vision width) of that
layer's text tokens (one Linear per layer), appended before ``ln_pre`` and replaced at deeper layers.  Only the
text tokens and the Linears train.
Defaults: base-to-new (``vit_b16_c2_ep5_batch4_2ctx.yaml``): depth 9, lr 0.0035, 5 epochs, batch 4; domain shift
and cross-dataset (``..._cross_datasets.yaml``): depth 3, lr 0.0026, 2 epochs.  The repository has no few-shot
config: this suite uses the base-to-new one for ``fewshot``.
"""

from bench.api import register_method
from ._deep import DeepPromptMethod, optim_spec, prompt_spec


@register_method("maple")
class MaPLe(DeepPromptMethod):
    description = "MaPLe: deep text prompts coupled to vision prompts by per-layer Linears (5 epochs, batch 4)"
    display_name = "MaPLe"
    color = "#17becf"
    marker = "h"
    order = 70
    coupled = True
    hparam_spec = {**prompt_spec(), **optim_spec()}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        if protocol in ("domain_shift", "cross_dataset"):
            return cls._hparams(2, 2, 3, 3, epochs=2, lr=0.0026)
        return cls._hparams(2, 2, 9, 9, epochs=5, lr=0.0035)

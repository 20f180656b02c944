"""Independent vision-language prompting (IVLP; MaPLe repository ``trainers/independentVL.py``,
``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``).

2 text tokens (initialised from the first two tokens of "a photo of a": the prompt reads "a photo of a <name>."
with "a photo" learnable) and 2 vision tokens, each tower with its own deep tokens at every layer (depth 12 =
every layer of ViT-B/16), no coupling.  SGD lr 0.0035, batch 4, 5 epochs, cosine, 1 warm-up epoch at 1e-5.
The repository has one config (base-to-new); this suite uses it for every protocol.
"""

from bench.api import register_method
from ._deep import DeepPromptMethod, optim_spec, prompt_spec


@register_method("ivlp")
class IVLP(DeepPromptMethod):
    description = "IVLP: independent deep text (2) and vision (2) prompts in every layer (5 epochs, batch 4)"
    display_name = "IVLP"
    color = "#e377c2"
    marker = "P"
    order = 60
    hparam_spec = {**prompt_spec(), **optim_spec()}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return cls._hparams(2, 2, 12, 12, epochs=5, lr=0.0035)

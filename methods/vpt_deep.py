"""VPT-deep as run in the MaPLe repository (``trainers/vpt.py``, ``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``).

8 learnable vision tokens appended before ``ln_pre`` and replaced at every layer (depth 12 = every layer of
ViT-B/16; a shallower tower gets them in all its layers), N(0, 0.02²); the text side is the frozen hand-crafted
prompt "a photo of a <name>.".  SGD lr 0.0025, batch 4, 5 epochs, cosine, 1 warm-up epoch at 1e-5.
The repository has one config (base-to-new); this suite uses it for every protocol.
"""

from bench.api import register_method
from ._deep import DeepPromptMethod, optim_spec, prompt_spec


@register_method("vpt_deep")
class VPTDeep(DeepPromptMethod):
    description = "VPT-deep: 8 vision prompt tokens in every layer, hand-crafted text (5 epochs, batch 4)"
    display_name = "VPT-deep"
    color = "#8c564b"
    marker = "X"
    order = 50
    hparam_spec = {**prompt_spec(), **optim_spec()}

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return cls._hparams(0, 8, 0, 12, epochs=5, lr=0.0025, ctx_init="")

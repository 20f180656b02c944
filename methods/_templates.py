"""Prompt templates shared by several built-in methods."""

# The 7 ImageNet templates CLIP's authors selected from their 80 (CoOp's ``IMAGENET_TEMPLATES_SELECT``; also
# Tip-Adapter ``datasets/imagenet.py:177-183``, TaskRes ``trainers/imagenet_templates.py:86-94``, LP++
# ``datasets/imagenet.py:178-184``, CLAP ``datasets/imagenet_templates.py``), in their order.
IMAGENET_TEMPLATES_SELECT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

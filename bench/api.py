"""Everything a method file needs, in one import: ``from bench.api import Method, register_method, ...``.

A method is one file with one :class:`Method` subclass decorated with :func:`register_method`; see the README's
"Adding a method". The names here are the stable surface for method authors; where they live inside the harness
may change (the older paths ``bench.method``, ``bench.registry``, ``bench.train``, ``bench.imagestream`` and
``bench.prompted`` stay importable for method files written against them).

* the interface: :class:`Method` (with the hooks the harness reads, declared and documented there),
  :func:`register_method`, :class:`Param` (a hyperparameter's declaration), :class:`Unsupported`, :class:`BenchError`;
* what the harness hands a method: :class:`Context`, :class:`TrainData` (cached features), and for
  ``trains_on = "images"`` :class:`ImageTrainData` of :class:`ImageBatch` batches;
* the training loops: :func:`fit_epochs` (cached features), :func:`fit_image_epochs` (image batches);
* CLIP helpers: :func:`encode_image` / :func:`encode_text` (the encoders with learned prompts inserted; :func:`check_vit`
  refuses a backbone they cannot prompt),
  :func:`cosine_logits`, :func:`handcrafted_text_features`, :func:`prompt_name`.
"""

# Integrator: add `fit` (the unified loop of bench.engine.loop) to the imports and to __all__ once merged.
from bench.engine.imagestream import ImageBatch, ImageTrainData, fit_image_epochs
from bench.engine.loop import fit_epochs
from bench.errors import BenchError
from bench.method import (Context, Method, Param, TrainData, Unsupported, cosine_logits, handcrafted_text_features,
                          prompt_name)
from bench.model.prompted import check_vit, encode_image, encode_text
from bench.registry import register_method

__all__ = [
    "BenchError",
    "Context",
    "ImageBatch",
    "ImageTrainData",
    "Method",
    "Param",
    "TrainData",
    "Unsupported",
    "check_vit",
    "cosine_logits",
    "encode_image",
    "encode_text",
    "fit_epochs",
    "fit_image_epochs",
    "handcrafted_text_features",
    "prompt_name",
    "register_method",
]

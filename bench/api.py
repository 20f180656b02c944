"""Everything a method file needs, in one import: ``from bench.api import Method, register_method, ...``.

A method is one file with one :class:`Method` subclass decorated with :func:`register_method`; see the README's
"Adding a method". The names here are the stable surface for method authors; where they live inside the harness
may change (the older paths ``bench.method``, ``bench.registry``, ``bench.train``, ``bench.imagestream`` and
``bench.prompted`` stay importable for method files written against them).

* the interface: :class:`Method` (with the hooks the harness reads, declared and documented there),
  :func:`register_method`, :class:`Param` (a hyperparameter's declaration), :class:`Unsupported`, :class:`BenchError`;
* what the harness hands a method: :class:`Context`, :class:`TrainData` (cached features), and for
  ``trains_on = "images"`` :class:`ImageTrainData` of :class:`ImageBatch` batches;
* the training loop: :func:`fit` over a batch source (:class:`FeatureBatches` of cached views, random batches with or
  without a partial last one; :class:`FullBatch`, one full-batch step per epoch; :class:`PooledBatches`, a reshuffled
  bank of samples such as every view of every image; :class:`ImageBatches` of the image stream) with an optimiser
  factory (default :func:`sgd`; any ``torch.optim`` optimiser) and a schedule (default :func:`warmup_cosine`),
  and a method-defined gradient step (``step_fn``);
  :func:`fit_epochs` (cached features) and :func:`fit_image_epochs` (image batches) are the reference recipe over it;
  ``fit(..., iterations=N)`` with :func:`cosine_iterations` trains for N steps with a per-iteration cosine;
* weight adapters: :class:`LoRA` (low-rank deltas on the attention of either tower, active inside ``applied()``);
* CLIP helpers: :func:`encode_image` / :func:`encode_text` (the encoders with learned prompts inserted; :func:`check_vit`
  refuses a backbone they cannot prompt),
  :func:`cosine_logits`, :func:`handcrafted_text_features`, :func:`prompt_name`.
"""

from bench.engine.imagestream import ImageBatch, ImageBatches, ImageTrainData, fit_image_epochs
from bench.engine.loop import (FeatureBatches, FullBatch, PooledBatches, cosine_iterations, fit, fit_epochs, sgd,
                               warmup_cosine)
from bench.errors import BenchError
from bench.method import (Context, Method, Param, TrainData, Unsupported, cosine_logits, handcrafted_text_features,
                          prompt_name)
from bench.model.lora import LoRA
from bench.model.prompted import check_vit, encode_image, encode_text
from bench.registry import register_method

__all__ = [
    "BenchError",
    "Context",
    "FeatureBatches",
    "FullBatch",
    "ImageBatch",
    "ImageBatches",
    "ImageTrainData",
    "LoRA",
    "Method",
    "Param",
    "PooledBatches",
    "TrainData",
    "Unsupported",
    "check_vit",
    "cosine_iterations",
    "cosine_logits",
    "encode_image",
    "encode_text",
    "fit",
    "fit_epochs",
    "fit_image_epochs",
    "handcrafted_text_features",
    "prompt_name",
    "register_method",
    "sgd",
    "warmup_cosine",
]

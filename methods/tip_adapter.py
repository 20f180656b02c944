"""Tip-Adapter (Zhang et al., ECCV 2022; ``gaopengcuhk/Tip-Adapter`` at d0e2d6f8, "TA"): a training-free key-value
cache of the few-shot training features added to zero-shot CLIP.

What is learned: nothing by gradient. The cache is built from the training set and two scalars (α, β) are searched.
* Cache (TA ``utils.py:38-62``): keys = L2-normalise(mean over ``augment_views`` = 10 augmented views of the RAW,
  unnormalised image features) of each training image (``configs/*.yaml:30``; views ``train.view(v)`` for
  v < min(10, ``train.n_views``), drawn with TA's RandomResizedCrop(scale=(0.5, 1)) + flip, ``main.py:173-178``,
  declared through ``train_augmentation``); values = one-hot training labels.
* Forward (``main.py:32,39-42,53-61``): logits = 100 · f̂ Wᵀ + α · exp(−β (1 − f̂ Kᵀ)) V, f̂ the normalised test
  feature, W the zero-shot classifier: the dataset's CoOp template (``datasets/oxford_pets.py:11`` etc.), on
  ImageNet the 7-template ensemble (``datasets/imagenet.py:177-183``, ``utils.py:18-35``). The 100 is hard-coded.
* Search (``utils.py:99-129``): β ∈ [0.1 + i·(S_β − 0.1)/200, i < 200] (outer) × α ∈ [0.1 + i·(S_α − 0.1)/20,
  i < 20] (inner), strict maximum of accuracy (first point on ties).
* Defaults per dataset (``configs/<ds>.yaml:17-21``): search_scale [S_β, S_α] and init β/α: caltech101 [12,5] 1/3;
  dtd [13,13] 1/2; eurosat [12,10] 1/2; fgvc_aircraft [30,30] 1/5; food101 [10,10] 1/1.17; imagenet [7,3] 1/1.17;
  oxford_flowers [50,50] 1/10; oxford_pets [7,3] 1/1.17; stanford_cars [20,10] 1/3; sun397 [12,10] 1/1.17;
  ucf101 [7,3] 1/3. Any other dataset (e.g. the miniature world's): ImageNet's [7,3] 1/1.17, a generic default.

Deliberate differences from the reference (docs/protocol.md, "Tip-Adapter"):
* α and β are searched on the run's few-shot validation split (min(K, 4) shots per class, test transform) only;
  TA searches on the FULL CoOp validation split (``main.py:47,170``) and, on ImageNet, on the test set
  (``main_imagenet.py:43``). Without a val split (ImageNet here) there is no search: init α/β; the statistics
  record which (``search``).
* Few-shot sampling, the feature cache's views and precision (fp32 features, float64 logits and search; TA runs fp16
  CLIP, ``clip/model.py:430``) are the suite's.
* Protocols: few-shot and domain shift (ImageNet-A/R: V's and W's columns selected by class name). Base-to-new: an
  unseen class has an all-zero value column, so it gets the zero-shot logits only (what the formula gives for a class
  absent from the cache; seen classes keep their positive cache bonus). The reference has no base-to-new or
  domain-shift code; cross-dataset transfer (zero-shot on every target) is not offered.
"""

from bench.api import register_method
from ._tip import TipBase, tip_defaults


@register_method("tip_adapter")
class TipAdapter(TipBase):
    description = "Tip-Adapter: training-free cache of 10-view-averaged few-shot features, alpha/beta searched on val"
    display_name = "Tip-Adapter"
    color = "#2CA02C"
    marker = "d"
    order = 110

    @classmethod
    def default_hparams(cls, protocol, dataset, shots):
        return tip_defaults(dataset)

    def fit(self, train):
        stats = self.build_cache(train)
        stats.update(self.search(train, self.keys))
        return stats

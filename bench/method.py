"""The method interface. A method is one file in ``methods/``: a :class:`Method` subclass under ``@register_method``.

The harness hands a method a :class:`Context` (frozen backbone, the training label space, the dataset's hand-crafted
templates, hyperparameters, seed, a checkpointer) and a :class:`TrainData` (labels + cached image features, one tensor
per augmented view).  The method trains in :meth:`Method.fit` and scores test features in :meth:`Method.logits`
against any list of class names (the training classes, the new classes of base-to-new, or a subset such as the
200 classes of ImageNet-A/R).  It never reads images, datasets or the results store.  A method that trains through
the image encoder declares ``trains_on = "images"`` and gets augmented image batches instead (bench/imagestream.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError


def prompt_name(classname: str) -> str:
    """Class names are stored with underscores (as in CoOp's split files); prompts use spaces."""
    return classname.replace("_", " ")


@dataclass
class TrainData:
    """A few-shot training set as cached, frozen image features (never images).

    The harness hands every tensor here (and the features passed to :meth:`Method.logits`) on the run's device,
    ``ctx.device``: a method can combine them with the backbone's outputs without moving anything.
    """

    labels: torch.Tensor                          # (N,) int64, 0..n_classes-1
    view: Callable[[int], torch.Tensor]           # v -> (N, D) float32 features of augmented view v (not normalised)
    n_views: int                                  # views available; epoch e uses view e % n_views
    eval_features: torch.Tensor                   # (N, D) features under the test transform (no augmentation)
    val_features: torch.Tensor | None = None      # few-shot validation split, test transform
    val_labels: torch.Tensor | None = None
    # Nothing of the test split is here: a method chooses its hyperparameters on the few-shot validation split
    # (or on held-out training images where a dataset has none) and sees test images only in ``logits``.


class Checkpointer:
    """Training-state checkpoints for resuming (SLURM preemption). The default keeps nothing.

    ``every_steps`` / ``every_s``: also save within epochs, every that many steps / seconds (0: not).
    """

    every_steps: int = 0
    every_s: float = 0.0

    def load(self) -> dict | None:
        return None

    def save(self, state: dict) -> None:
        pass

    def clear(self) -> None:
        pass


@dataclass
class Context:
    """What a method gets from the harness.

    ``template`` is the hand-crafted template of the dataset at hand: the training dataset's while the method is
    built and fitted, and the *evaluated* dataset's inside each evaluation (the runner wraps every ``logits`` call
    in :meth:`evaluating`), so a method scoring with a hand-crafted prompt uses the right one on every target of
    cross-dataset transfer (DTD: "{} texture.") without knowing about protocols.  ``eval_dataset`` names the
    evaluated dataset (None while training); :meth:`template_for` looks up any dataset's template.
    """

    backbone: Any                                 # bench.model.backbone.Backbone (frozen, eval mode)
    classnames: list[str]                         # training label space, index = label
    template: str                                 # CoOp hand-crafted template of the dataset at hand (see above)
    dataset: str
    hparams: dict
    seed: int | None = None
    protocol: str = "fewshot"
    checkpointer: Checkpointer = field(default_factory=Checkpointer)
    checkpoint_every: int = 0                     # epochs between training-state checkpoints (0: never)
    log: Callable[[str], None] = print
    templates: dict = field(default_factory=dict)  # dataset key -> its hand-crafted template (filled by the runner)
    eval_dataset: str | None = None               # the dataset being evaluated (set by :meth:`evaluating`)

    def __post_init__(self):
        self.templates = {self.dataset: self.template, **self.templates}

    @property
    def device(self):
        return self.backbone.device

    def template_for(self, dataset: str) -> str:
        """The hand-crafted template of ``dataset`` (its spec's ``template``)."""
        if dataset not in self.templates:
            from bench.data import get_spec

            self.templates[dataset] = get_spec(dataset).template
        return self.templates[dataset]

    @contextmanager
    def evaluating(self, dataset: str):
        """Inside: ``eval_dataset = dataset`` and ``template`` = that dataset's template; restored on exit."""
        saved = (self.eval_dataset, self.template)
        self.eval_dataset, self.template = dataset, self.template_for(dataset)
        try:
            yield self
        finally:
            self.eval_dataset, self.template = saved


_TEXT_CACHE: dict = {}


def handcrafted_text_features(backbone, template: str, classnames: list[str]) -> torch.Tensor:
    """L2-normalised text features of ``template`` filled with each class name, computed once per process."""
    key = (backbone.identity, template, tuple(classnames))
    if key not in _TEXT_CACHE:
        texts = [template.format(prompt_name(c)) for c in classnames]
        _TEXT_CACHE[key] = backbone.encode_text(texts, normalize=True)
    return _TEXT_CACHE[key]


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """CLIP logits: logit_scale · cos(image, text); both sides are L2-normalised here."""
    return logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class Param:
    """A method's declaration of one hyperparameter (``Method.hparam_spec``): its type, inclusive ``min``/``max``
    bounds, allowed ``choices``, whether ``None`` is allowed, and a short ``help`` for error messages."""

    type: type
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    help: str = ""

    def allowed(self) -> str:
        """The allowed values in words, e.g. 'an integer >= 1' or one of end, middle, front."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = _TYPE_NAMES.get(self.type, self.type.__name__)
            if self.min is not None and self.max is not None:
                text += f" in [{self.min}, {self.max}]"
            elif self.min is not None:
                text += f" >= {self.min}"
            elif self.max is not None:
                text += f" <= {self.max}"
        return text + (" (or null)" if self.nullable else "")

    def convert(self, key: str, value: Any, where: str = "") -> Any:
        """``value`` (as given, strings from ``--set`` included) as the declared type; BenchError otherwise."""
        def bad() -> BenchError:
            return BenchError(f"bad value {value!r} for hyperparameter {key}{where}: expected {self.allowed()}"
                              + (f" ({self.help})" if self.help else ""))

        if value is None or (self.nullable and isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if self.nullable:
                return None
            raise bad()
        if self.type is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
                out = value.strip().lower() in ("true", "yes", "1")
            else:
                raise bad()
        elif self.type is int:
            if isinstance(value, bool):
                raise bad()
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, str):
                try:
                    value = int(value.strip())
                except ValueError:
                    raise bad() from None
            if not isinstance(value, int):
                raise bad()
            out = value
        elif self.type is float:
            if isinstance(value, bool):
                raise bad()
            try:
                out = float(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise bad() from None
            if out != out or out in (float("inf"), float("-inf")):
                raise bad()
        elif self.type is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise bad()
            out = str(value)
        else:
            if not isinstance(value, self.type):
                raise bad()
            out = value
        if self.choices is not None and out not in self.choices:
            raise bad()
        if (self.min is not None and out < self.min) or (self.max is not None and out > self.max):
            raise bad()
        return out


def check_augmentation(method: str, augmentation) -> dict | None:
    """A method's declared training augmentation (:meth:`Method.train_augmentation`) as stored in its configs:
    None, or ``{"crop_scale": [lo, hi]}`` with 0 < lo <= hi <= 1; anything else is refused in one line."""
    if augmentation is None:
        return None
    bad = BenchError(f"method {method}: train_augmentation must return None or {{'crop_scale': (lo, hi)}} with "
                     f"0 < lo <= hi <= 1 (got {augmentation!r})")
    if not isinstance(augmentation, dict) or set(augmentation) != {"crop_scale"}:
        raise bad
    try:
        lo, hi = (float(v) for v in augmentation["crop_scale"])
    except (TypeError, ValueError):
        raise bad from None
    if not 0 < lo <= hi <= 1:
        raise bad
    return {"crop_scale": [lo, hi]}


class Unsupported(BenchError):
    """Raised by a method asked for something it cannot do (e.g. unseen class names for a CSC context)."""


# Colours (Okabe-Ito / colour-blind safe, then tab10-like) and markers for methods that do not choose their own.
DEFAULT_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#8C564B",
                   "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD")
DEFAULT_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h", "<", ">", "p", "*")
DISPLAY_ATTRS = ("display_name", "color", "marker", "linestyle", "order")


def _stable_index(text: str, n: int) -> int:
    """The same index for the same text in every process (``hash()`` is salted per process)."""
    import hashlib

    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % n


def default_display(name: str) -> dict:
    """Display attributes of a method (or a label) that sets none: colour and marker from its name's hash."""
    return {"display_name": name, "color": DEFAULT_PALETTE[_stable_index(name, len(DEFAULT_PALETTE))],
            "marker": DEFAULT_MARKERS[_stable_index("marker:" + name, len(DEFAULT_MARKERS))],
            "linestyle": "-", "order": 1000}


class Method:
    """Base class: subclass it in one file in ``methods/`` and decorate it with ``@register_method("name")``."""

    name: ClassVar[str] = ""
    needs_training: ClassVar[bool] = True      # False: shots and seed do not matter (zero-shot)
    protocols: ClassVar[tuple[str, ...]] = ("fewshot", "base2new", "domain_shift", "cross_dataset")
    description: ClassVar[str] = ""
    # Every key default_hparams returns, declared with its type and range: `--set` values are converted and
    # checked against it when the grid is built (unknown keys and out-of-range values are refused).
    hparam_spec: ClassVar[dict[str, Param]] = {}
    # How tables and figures show the method (the same in every figure). A class that leaves one out gets a
    # default at registration: its name, a colour and marker picked by a hash of its name, "-", order 1000.
    # (Attributes are per class: a subclass of a registered method does not inherit its parent's look.)
    display_name: ClassVar[str] = ""           # legend / figure name, e.g. "CoOp"
    color: ClassVar[str] = ""                  # hex colour, e.g. "#D55E00"
    marker: ClassVar[str] = ""                 # matplotlib marker, e.g. "o"
    linestyle: ClassVar[str] = "-"             # "-" or ":"
    order: ClassVar[int] = 1000                # position in tables and legends (zeroshot 0, ..., user methods 1000)

    @classmethod
    def fill_display_defaults(cls, name: str) -> None:
        """Give ``cls`` every display attribute it does not set in its own class body (called by the registry)."""
        defaults = default_display(name)
        for attr in DISPLAY_ATTRS:
            if attr not in cls.__dict__:
                setattr(cls, attr, defaults[attr])
    # "features": fit() gets a TrainData of cached features and logits() test features (the default);
    # "images": fit() gets a bench.engine.imagestream.ImageTrainData (augmented image batches through DataLoader
    # workers) and logits() batches of test images under the test transform (methods that prompt the encoder).
    trains_on: ClassVar[str] = "features"
    # Inductive methods (every built-in one) score each test image on its own: its logits do not change with the
    # other test images evaluated (tests/test_leaks.py checks it for every registered method). A method that uses
    # the test set's images at evaluation (transductive) must say so here; its rows are marked in tables.
    transductive: ClassVar[bool] = False

    @classmethod
    def default_hparams(cls, protocol: str, dataset: str, shots: int) -> dict:
        """The reference hyperparameters for this protocol / dataset / shot count (docs/protocol.md §7)."""
        return {}

    # ---- hooks the harness asks about a run before it runs (cached views; packing SLURM array tasks) ----------

    @classmethod
    def train_epochs(cls, hparams: dict) -> int | None:
        """Epochs a run with ``hparams`` trains for, or None when the method does not train in epochs.

        By default the grid caches one augmented view per epoch (:meth:`cached_views`, at most ``--views``): epoch
        ``e`` sees view ``e % n_views``. Default: ``hparams["epochs"]`` (None when absent)."""
        return hparams.get("epochs")

    @classmethod
    def cached_views(cls, hparams: dict) -> int | None:
        """Augmented views of each training image the run caches (``TrainData.n_views``); ``--views N`` caps it at
        N. Default: one per epoch (:meth:`train_epochs`). A method that uses a fixed number of views declares it
        (Tip-Adapter: 10, averaged into its cache; CLAP: 20, kept as separate samples)."""
        return cls.train_epochs(hparams)

    @classmethod
    def train_augmentation(cls, hparams: dict) -> dict | None:
        """The augmentation of the cached training views. None: CoOp's reference augmentation (RandomResizedCrop,
        scale 0.08-1, bicubic, then a horizontal flip); ``{"crop_scale": (lo, hi)}``: the same with another crop
        scale range (Tip-Adapter's and LP++'s (0.5, 1)). Views are cached per augmentation, so methods declaring
        the same one share their views; a method trained on images (``trains_on = "images"``) gets its image
        stream drawn with it."""
        return None

    @classmethod
    def estimated_cost(cls, hparams: dict, n_train: int) -> float:
        """A rough cost of one run, in relative units (training epochs × training images), from its ``hparams``
        and ``n_train`` (shots × training classes, at least one shot). Only its scale matters: SLURM packing runs
        several runs costing at most the profile's ``pack_max_cost`` into one array task, and sorts the others
        most expensive first. 0 means negligible (always packed).

        Default: :meth:`train_epochs` (or a ``max_epoch`` hyperparameter) × ``n_train``; 0 for a method that does
        not train (``needs_training`` False) or does not train in epochs (e.g. the linear probe's convex fit on
        cached features). Override it when training costs something else (e.g. a number of iterations)."""
        epochs = cls.train_epochs(hparams) or hparams.get("max_epoch")
        if not cls.needs_training or not epochs:
            return 0.0
        return float(epochs) * n_train

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.hp = ctx.hparams

    # --- Hooks the harness reads (runner, registry, report); a method overrides those it needs -------------------
    # The run's identity: bench.registry.code_version digests the method's source (its module and its package's
    # helper modules it uses); ``version``, when set, is appended (``<digest>-v<version>``), so bumping it makes
    # stored results of this method stale on purpose, e.g. after a change outside its source that alters numbers.
    version: ClassVar[int | str | None] = None

    def template_info(self) -> dict:
        """The text prompts this method scores with, recorded in the result: once as trained, and per evaluation
        (inside :meth:`Context.evaluating`, so ``ctx.template`` is the evaluated dataset's). JSON-serialisable; the
        default is the hand-crafted template at hand, ``{"template": ctx.template}``."""
        return {"template": self.ctx.template}

    def fit(self, train: TrainData) -> dict:
        """Train on cached features; return training statistics, stored with the result (e.g. ``{"loss": [per-epoch
        means]}``). One key is read by the harness: ``"table_note"``, a one-line caveat (e.g. "C searched on test
        images") that tables show, flagged, under this run's rows."""
        return {}

    def logits(self, features: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        """(N, D) test image features (not normalised) -> (N, len(classnames)) logits."""
        raise NotImplementedError

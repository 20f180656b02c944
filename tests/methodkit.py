"""What the method test modules share: building a method with a Context, a TrainData of given features, an
in-memory checkpointer that simulates a preemption, and zero-shot CLIP scored by hand (plain open_clip, no bench code).

The fixtures that go with these (``bb``, the tiny random backbone, and ``one_thread``) live in ``tests/conftest.py``;
a module opts into ``one_thread`` with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

import copy

import torch
import torch.nn.functional as F
from PIL import Image

from bench.method import Checkpointer, Context, TrainData
from bench.registry import get_method

TEMPLATE = "a photo of a {}."


def make(bb, method, names, protocol="fewshot", shots=16, seed=1, dataset="synthetic", template=TEMPLATE,
         hparams=None, **overrides):
    """``method`` on ``bb`` for ``names``: its default hparams for (protocol, dataset, shots), updated with
    ``hparams`` then ``overrides`` (``hparams`` carries overrides whose names are taken here, e.g. an hparam
    called ``template``)."""
    cls = get_method(method)
    hp = cls.default_hparams(protocol, dataset, shots)
    hp.update(hparams or {})
    hp.update(overrides)
    ctx = Context(backbone=bb, classnames=list(names), template=template, dataset=dataset, hparams=hp, seed=seed,
                  protocol=protocol, log=lambda m: None)
    return cls(ctx)


def train_data(x, y, xv=None, yv=None, views=None, wrap=True):
    """Eval features ``x``, labels ``y``, the val split (``xv``, ``yv``) and the views (default: ``[x]``); view v is
    ``views[v % len(views)]``, or with ``wrap=False`` strictly ``views[v]`` (a view past the last one is an error)."""
    views = views or [x]
    view = (lambda v: views[v % len(views)]) if wrap else (lambda v: views[v])
    return TrainData(labels=y, view=view, n_views=len(views), eval_features=x, val_features=xv, val_labels=yv)


class Stop(Exception):
    """The simulated preemption."""


class MemoryCheckpointer(Checkpointer):
    """Keeps the last state in memory; ``stop_at`` simulates a preemption (raises :class:`Stop`) right after the
    save at that epoch, or at that (epoch, step) where it is a tuple. ``quiet``: the loop logs its saves at debug
    level."""

    def __init__(self, stop_at=None, quiet=False):
        self.state, self.stop_at, self.quiet = None, stop_at, quiet

    def load(self):
        return self.state

    def save(self, state):
        self.state = copy.deepcopy(state)
        at = (state["epoch"], state["step"]) if isinstance(self.stop_at, tuple) else state["epoch"]
        if self.stop_at is not None and at == self.stop_at:
            raise Stop

    def clear(self):
        self.state = None


def zeroshot_by_hand(root, ckpt, dataset: str, templates: list[str]) -> tuple[float, torch.Tensor]:
    """(top-1 %, predictions) of zero-shot CLIP on ``dataset``'s test split, the tiny-test model at ``ckpt``: plain
    open_clip + PIL + the test transform, templates averaged as CoOp does; no bench model or feature code."""
    import open_clip
    import torchvision.transforms as T

    from bench.data import load_splits

    model = open_clip.create_model("tiny-test")
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tok = open_clip.get_tokenizer("tiny-test")
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
    splits = load_splits(dataset, root)
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack(
            [tf(Image.open(splits.root / it.path).convert("RGB")) for it in splits.test])), dim=-1)
        text = 0
        for t in templates:
            text = text + F.normalize(model.encode_text(tok([t.format(c.replace("_", " "))
                                                             for c in splits.classnames])), dim=-1)
        text = F.normalize(text, dim=-1)
    pred = (img @ text.t()).argmax(1)
    labels = torch.tensor([it.label for it in splits.test])
    return 100.0 * (pred == labels).float().mean().item(), pred

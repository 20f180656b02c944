"""What the method test modules share: building a method with a Context, a TrainData of given features, and an
in-memory checkpointer that simulates a preemption.

The fixtures that go with these (``bb``, the tiny random backbone, and ``one_thread``) live in ``tests/conftest.py``;
a module opts into ``one_thread`` with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

import copy

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

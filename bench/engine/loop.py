"""The one training loop of the suite, :func:`fit`, for both input paths, and the reference recipe as its default.

``fit`` trains a module over a :class:`Batches` source: :class:`FeatureBatches` (cached features: epoch ``e``
trains on cached augmented view ``e % n_views`` in a random batch order drawn from a generator seeded with the run
seed) or the image stream (:class:`bench.engine.imagestream.ImageLoader`: batch order and crops seeded by run seed,
image and epoch).  Its seams, for recipes other than the reference one: ``optimizer`` (a factory: parameters ->
optimiser), ``schedule`` (the learning rate at (epoch, step, steps per epoch), applied before every step) and
``step_fn`` (a method-defined gradient step); ``iterations`` trains for a number of steps instead of epochs (the
last epoch stops early; :func:`cosine_iterations` is a per-iteration schedule).  The default is the reference recipe (docs/protocol.md §6): SGD
(lr, momentum 0.9, weight decay 5e-4), one epoch of constant warm-up at 1e-5, then cosine annealing stepped per
epoch and shifted by one epoch; random batches with ``drop_last`` exactly when the set holds at least one batch.
:func:`fit_epochs` (features) and :func:`bench.engine.imagestream.fit_image_epochs` (images) are that recipe.

Checkpoints (through ``ctx.checkpointer``; the default one keeps nothing): every ``ctx.checkpoint_every`` epochs,
every ``checkpointer.every_steps`` steps and every ``checkpointer.every_s`` seconds (checked between steps), at
the end of training (before evaluation, so a preemption during evaluation does not repeat training), and at the
next step boundary after a preemption request (:data:`STOP`, set by the SLURM task's signal handler).  A
checkpoint holds the parameters and buffers (keep running aggregates in buffers), optimiser and loss-scaler state,
the batch source's state at the start of the current epoch, the step reached in that epoch, the partial loss sums
and the global RNG states, so a resumed run continues mid-epoch (skipping the done steps without computing them)
and ends with exactly the numbers of an uninterrupted one.

fp16 training (``amp`` autocast or fp16 weights) scales the loss with ``torch.amp.GradScaler``; bf16 and fp32
do not need it.  On CUDA, runs use deterministic algorithms (:func:`deterministic_cuda`), so two runs with the
same seed, and a resumed run, give bit-identical numbers on the same GPU type and software; an op without a
deterministic kernel fails the run in one line.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from bench import log
from bench.errors import BenchError
from bench.method import Checkpointer, Context, TrainData


def lr_at_epoch(epoch: int, max_epoch: int, lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate used during 0-indexed ``epoch`` (Dassl's ConstantWarmupScheduler around CosineAnnealingLR)."""
    if epoch < warmup_epochs:
        return warmup_lr
    k = epoch - warmup_epochs
    return lr * (1 + math.cos(math.pi * k / max_epoch)) / 2


def batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True) -> list[torch.Tensor]:
    """Random batches of indices (one permutation drawn from ``generator``); a partial last batch is dropped
    (``drop_last``, the reference's rule) unless the whole set is smaller than one batch, or kept."""
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        return [order]
    stop = n - batch_size + 1 if drop_last else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


class StopRequest:
    """A request to stop training at the next step boundary (a SLURM preemption or time-limit signal).

    While a training loop runs (``active``), :meth:`defer` stores ``then`` (the signal's real handler: submitit's
    checkpoint, requeue and exit) instead of letting it run in the middle of a step; the loop saves its state at
    the next step boundary and calls :meth:`release`, which runs ``then``.  Where the loop's state is consistent
    but the next step may be far (an epoch's augmented view being encoded), :meth:`consistent` registers a saver
    that :meth:`defer` runs at once, and the handler runs right after.  Outside training :meth:`defer` returns
    False and the caller runs the handler at once (the state worth keeping is already saved).
    """

    def __init__(self):
        self.active = 0
        self.pending: Callable[[], object] | None = None
        self.save_now: Callable[[], object] | None = None

    @property
    def requested(self) -> bool:
        return self.pending is not None

    def defer(self, then: Callable[[], object]) -> bool:
        if self.save_now is not None:
            self.save_now()
            return False
        if not self.active:
            return False
        self.pending = then
        return True

    def release(self) -> None:
        then, self.pending = self.pending, None
        if then is not None:
            then()

    @contextmanager
    def consistent(self, saver: Callable[[], object]):
        self.save_now = saver
        try:
            yield self
        finally:
            self.save_now = None

    @contextmanager
    def training(self):
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1


STOP = StopRequest()


def grad_scaler(precision: str, device) -> "torch.amp.GradScaler | None":
    """A loss scaler for fp16 training (``amp`` autocast or fp16 weights); None for bf16 and fp32."""
    if precision not in ("amp", "fp16"):
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def determinism_mode() -> str:
    """``BENCH_DETERMINISTIC``: 1 (default) strict, ``warn`` (non-deterministic ops only warn), 0 off."""
    value = os.environ.get("BENCH_DETERMINISTIC", "1").strip().lower()
    if value in ("0", "false", "off", "no"):
        return "off"
    return "warn" if value == "warn" else "strict"


def deterministic_cuda() -> str:
    """Deterministic CUDA training: deterministic algorithms (strict: attention backward then takes its
    deterministic kernel, and an op without one fails the run in one line), cuDNN deterministic without autotuning,
    and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, set when ``bench`` is imported, before CUDA starts).
    Returns the mode, recorded in each result."""
    mode = determinism_mode()
    if mode == "off":
        torch.use_deterministic_algorithms(False)
        return mode
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return mode


def rng_states(device) -> dict:
    """The global RNG states, as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    device = torch.device(device)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_states(states: dict, device) -> None:
    device = torch.device(device)
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    if device.type == "cuda" and states.get("cuda") is not None:
        torch.cuda.set_rng_state(states["cuda"], device)



# ----------------------------------------------------------------------------------------------------------------------
# The recipe's parts (the defaults of fit's seams)


def sgd(lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> Callable[[list], torch.optim.Optimizer]:
    """The reference optimiser as a factory: trainable parameters -> ``torch.optim.SGD``."""
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def warmup_cosine(lr: float, epochs: int, warmup_epochs: int = 1,
                  warmup_lr: float = 1e-5) -> Callable[[int, int, int], float]:
    """The reference schedule as ``(epoch, step, steps per epoch) -> lr``: :func:`lr_at_epoch`, constant per epoch."""
    return lambda epoch, step, steps: lr_at_epoch(epoch, epochs, lr, warmup_epochs, warmup_lr)


def cosine_iterations(lr: float, iterations: int, eta_min: float = 0.0) -> Callable[[int, int, int], float]:
    """Cosine annealing from ``lr`` to ``eta_min`` over ``iterations`` steps, stepped per iteration (the closed form
    of ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=iterations, eta_min)``), as ``(epoch, step, steps per
    epoch) -> lr`` at global iteration ``epoch * steps + step``."""
    def schedule(epoch: int, step: int, steps: int) -> float:
        t = epoch * steps + step
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / iterations)) / 2
    return schedule


def gradient_step(loss_fn: Callable[..., torch.Tensor], args: tuple, opt: torch.optim.Optimizer,
                  scaler: "torch.amp.GradScaler | None") -> torch.Tensor:
    """One optimiser step on ``loss_fn(*args)`` (scaled for fp16); returns the loss. The default ``step_fn``."""
    loss = loss_fn(*args)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss


# ----------------------------------------------------------------------------------------------------------------------
# Batch sources


class Batches(Protocol):
    """What :func:`fit` trains on: ``len()`` steps per epoch, each yielding ``(args of loss_fn, batch size)``.

    ``epoch(e, start, saver)`` returns the batches of epoch ``e`` from step ``start`` on (steps before it are not
    computed); ``saver`` saves the state at the start of the epoch and may be called while a long epoch set-up
    (e.g. encoding a view) runs.  ``state(boundary)`` is what a checkpoint must hold to rebuild the current epoch's
    batches (``boundary``: the next epoch's instead), ``load_state`` restores it.  ``desc``: a progress-bar label
    for each epoch, or None for no bar.
    """

    desc: str | None

    def __len__(self) -> int: ...

    def epoch(self, e: int, start: int, saver: Callable[[], object]) -> Iterator[tuple[tuple, int]]: ...

    def state(self, boundary: bool) -> dict: ...

    def load_state(self, state: dict) -> None: ...


class FeatureBatches:
    """Cached features: epoch ``e`` -> view ``e % n_views`` in random batches of indices (:func:`batches`) drawn from
    a generator seeded with the run seed; yields ``((features, labels), n)``. ``drop_last=False`` keeps a partial
    last batch (a loader with PyTorch's default, e.g. Tip-Adapter-F's); ``batch_size >= N`` gives full-batch steps."""

    desc = None

    def __init__(self, train: TrainData, batch_size: int, seed: int | None, device, drop_last: bool = True):
        self.train, self.batch_size, self.device = train, int(batch_size), torch.device(device)
        self.drop_last = bool(drop_last)
        self.gen = torch.Generator().manual_seed(int(seed or 0))
        self.labels = train.labels.to(self.device)
        self.epoch_start = self.gen.get_state()

    def __len__(self) -> int:
        n = len(self.labels)
        if n < self.batch_size:
            return 1
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, e: int, start: int, saver: Callable[[], object]):
        if start:
            feats = self.train.view(e % self.train.n_views).to(self.device)
        else:  # at an epoch boundary: encoding this view may take minutes
            with STOP.consistent(saver):
                feats = self.train.view(e % self.train.n_views).to(self.device)
        self.epoch_start = self.gen.get_state()
        order = batches(len(self.labels), self.batch_size, self.gen, self.drop_last)
        return (((feats[idx], self.labels[idx]), len(idx)) for idx in (i.to(self.device) for i in order[start:]))

    def state(self, boundary: bool) -> dict:
        return {"generator": self.gen.get_state() if boundary else self.epoch_start}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(state["generator"])


class FullBatch:
    """One step per epoch on the whole set in its given order, no RNG (full-batch gradient descent, e.g. LP++'s):
    yields ``((features, labels), N)`` of the tensors given."""

    desc = None

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return 1

    def epoch(self, e: int, start: int, saver: Callable[[], object]):
        return iter([((self.features, self.labels), len(self.labels))][start:])

    def state(self, boundary: bool) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class PooledBatches:
    """One bank of samples (e.g. every augmented view of every image as its own sample, CLAP's): each epoch the
    bank is reshuffled by a generator seeded with the run seed and ``steps`` consecutive slices of ``batch_size``
    are taken; ``steps`` = ``n_images // batch_size`` when ``n_images >= batch_size``, else 1 (an epoch as a loader
    over the images counts it, however many samples the bank holds). Yields ``((features, labels), n)``."""

    desc = None

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, n_images: int, batch_size: int,
                 seed: int | None):
        self.features, self.labels = features, labels
        self.batch_size = int(batch_size)
        self.steps = int(n_images) // self.batch_size if int(n_images) >= self.batch_size else 1
        self.gen = torch.Generator().manual_seed(int(seed or 0))
        self.epoch_start = self.gen.get_state()

    def __len__(self) -> int:
        return self.steps

    def epoch(self, e: int, start: int, saver: Callable[[], object]):
        self.epoch_start = self.gen.get_state()
        order = torch.randperm(len(self.labels), generator=self.gen).to(self.labels.device)
        b = self.batch_size
        slices = [order[i * b:(i + 1) * b] for i in range(self.steps)]
        return (((self.features[idx], self.labels[idx]), len(idx)) for idx in slices[start:])

    def state(self, boundary: bool) -> dict:
        return {"generator": self.gen.get_state() if boundary else self.epoch_start}

    def load_state(self, state: dict) -> None:
        self.gen.set_state(state["generator"])


# ----------------------------------------------------------------------------------------------------------------------
# The loop


def _deterministic_error(e: RuntimeError) -> BenchError | None:
    if "use_deterministic_algorithms" not in str(e):
        return None
    return BenchError(f"{str(e).splitlines()[0][:200]} (set BENCH_DETERMINISTIC=warn to allow non-deterministic "
                      f"CUDA ops)")


def fit(
    module: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    data: Batches,
    ctx: Context,
    *,
    epochs: int | None = None,
    optimizer: Callable[[list], torch.optim.Optimizer],
    schedule: Callable[[int, int, int], float] | None = None,
    step_fn: Callable[..., torch.Tensor] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    iterations: int | None = None,
) -> dict:
    """Train ``module``'s parameters that require grad on ``data`` for ``epochs`` epochs, or for ``iterations``
    steps (then ``epochs`` = ceil(iterations / steps per epoch) and the last epoch stops after the
    ``iterations``-th step; give one of the two); returns {"loss": per-epoch mean losses, "epochs"} (and
    "iterations", and "loss_scale" for fp16).

    ``optimizer(params)`` builds the optimiser; ``schedule(epoch, step, steps_per_epoch)`` gives the learning rate
    of every parameter group before each step (None: the optimiser's own); ``step_fn(loss_fn, args, opt, scaler)``
    makes one gradient step and returns the loss (default :func:`gradient_step`); ``on_epoch_end(e)`` runs after
    each epoch ``e`` (1-based), before its checkpoint.  Checkpoints and resume: see the module docstring.
    """
    steps = len(data)
    if (epochs is None) == (iterations is None):
        raise ValueError("fit: give epochs or iterations (one of the two)")
    if iterations is not None:
        epochs = math.ceil(int(iterations) / steps)
    device = torch.device(ctx.device)
    opt = optimizer([p for p in module.parameters() if p.requires_grad])
    scaler = grad_scaler(getattr(ctx.backbone, "precision", "fp32"), device)
    step_fn = step_fn or gradient_step
    ck = ctx.checkpointer
    every_steps = int(getattr(ck, "every_steps", 0) or 0)
    every_s = float(getattr(ck, "every_s", 0) or 0)
    history: list[float] = []
    start_epoch, start_step, partial, rng = 0, 0, (0.0, 0), None
    skipped = 0  # fp16 steps the loss scaler skipped (inf/nan gradients)
    state = ck.load()
    if state is not None:
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state.get("generator") is not None:
            data.load_state(state)
        history = list(state["loss"])
        start_epoch, start_step = int(state["epoch"]), int(state.get("step", 0))
        partial = (float(state.get("epoch_total", 0.0)), int(state.get("epoch_count", 0)))
        skipped = int(state.get("skipped_steps", 0))
        rng = state.get("rng")
        if isinstance(rng, torch.Tensor):  # an image-side checkpoint of an earlier version: torch's state only
            rng = {"torch": rng}
        if rng is not None and not start_step:  # saved at an epoch boundary: restore now (mid-epoch: see below)
            _restore_rng(rng, device)
        where = "training complete" if start_epoch >= epochs else f"epoch {start_epoch}/{epochs}" + (
            f", step {start_step}" if start_step else "")
        ctx.log(f"resumed from checkpoint at {where}")

    def save(epoch: int, step: int, boundary: bool, total: float, count: int, why: str) -> None:
        if type(ck).save is Checkpointer.save:  # the default keeps nothing: nothing to say
            return
        ck.save({"module": module.state_dict(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, **data.state(boundary),
                 "loss": list(history), "epoch": epoch, "step": step, "epoch_total": total, "epoch_count": count,
                 "skipped_steps": skipped, "rng": rng_states(device)})
        say = log.debug if getattr(ck, "quiet", False) and why != "preemption" else ctx.log
        say(f"checkpoint at epoch {epoch}/{epochs}" + (f", step {step}" if step else "") + f" ({why})")

    module.train()
    last_save, steps_since = time.monotonic(), 0
    with STOP.training():
        for epoch in range(start_epoch, epochs):
            resume = epoch == start_epoch and start_step > 0
            first = start_step if resume else 0
            n_steps = steps if iterations is None else min(steps, int(iterations) - epoch * steps)
            if schedule is not None:
                _set_lr(opt, schedule(epoch, first, steps))
            stream = data.epoch(epoch, first, lambda: save(epoch, 0, True, 0.0, 0, "preemption"))
            if resume and rng is not None:  # the RNG as it was after this step (setting up the epoch may draw)
                _restore_rng(rng, device)
            if data.desc is not None:
                stream = log.progress(stream, desc=f"{data.desc} {epoch + 1}/{epochs}", total=n_steps - first)
            total, count = partial if resume else (0.0, 0)
            for step, (args, n) in enumerate(stream, first):
                if schedule is not None and step > first:
                    _set_lr(opt, schedule(epoch, step, steps))
                scale = scaler.get_scale() if scaler is not None else None
                try:
                    loss = step_fn(loss_fn, args, opt, scaler)
                except RuntimeError as e:
                    error = _deterministic_error(e)
                    if error is None:
                        raise
                    raise error from None
                if scaler is not None:
                    skipped += int(scaler.get_scale() < scale)
                total += float(loss.detach()) * n
                count += n
                steps_since += 1
                why = ("preemption" if STOP.requested else
                       "steps" if every_steps and steps_since >= every_steps else
                       "time" if every_s and time.monotonic() - last_save >= every_s else None)
                if why and step + 1 < n_steps:  # mid-epoch (an epoch's last step is saved below)
                    save(epoch, step + 1, False, total, count, why)
                    last_save, steps_since = time.monotonic(), 0
                    if why == "preemption":
                        STOP.release()  # submitit: requeue and exit
                if iterations is not None and step + 1 >= n_steps:  # the last (partial) epoch of an iteration count
                    break
            history.append(total / max(count, 1))
            done = epoch + 1
            if on_epoch_end is not None:
                on_epoch_end(done)
            periodic = ctx.checkpoint_every and done % ctx.checkpoint_every == 0
            why = ("end of training" if done == epochs else "preemption" if STOP.requested else
                   "epochs" if periodic else "steps" if every_steps and steps_since >= every_steps else
                   "time" if every_s and time.monotonic() - last_save >= every_s else None)
            if why:
                save(done, 0, True, 0.0, 0, why)
                last_save, steps_since = time.monotonic(), 0
                if STOP.requested:
                    STOP.release()
    module.eval()
    stats = {"loss": history, "epochs": epochs}
    if iterations is not None:
        stats["iterations"] = int(iterations)
    if scaler is not None:
        stats["loss_scale"] = {"final": float(scaler.get_scale()), "skipped_steps": skipped}
    return stats


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _restore_rng(states: dict, device) -> None:
    if "numpy" in states:
        set_rng_states(states, device)
    else:
        torch.set_rng_state(states["torch"])


def fit_epochs(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train: TrainData,
    ctx: Context,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
) -> dict:
    """The reference recipe over cached features: ``loss_fn(features, labels)``; see :func:`fit`."""
    return fit(module, loss_fn, FeatureBatches(train, batch_size, ctx.seed, ctx.device), ctx, epochs=epochs,
               optimizer=sgd(lr, momentum, weight_decay), schedule=warmup_cosine(lr, epochs, warmup_epochs, warmup_lr))

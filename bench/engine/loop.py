"""The reference optimisation recipe as plain functions (no trainer classes).

SGD (lr, momentum 0.9, weight decay 5e-4), one epoch of constant warm-up at 1e-5, then cosine annealing stepped
per epoch and shifted by one epoch (docs/protocol.md §6), random batch order with ``drop_last`` exactly when the
set holds at least one batch.  Epoch ``e`` trains on cached augmented view ``e % n_views``.

Checkpoints (through ``ctx.checkpointer``; the default one keeps nothing): every ``ctx.checkpoint_every`` epochs,
every ``checkpointer.every_steps`` steps and every ``checkpointer.every_s`` seconds (checked between steps), at
the end of training (before evaluation, so a preemption during evaluation does not repeat training), and at the
next step boundary after a preemption request (:data:`STOP`, set by the SLURM task's signal handler).  A
checkpoint holds the parameters, optimiser and loss-scaler state, the batch-order generator as it was at the start
of the current epoch, the step reached in that epoch, the partial loss sums and the global RNG states, so a
resumed run continues mid-epoch and ends with exactly the numbers of an uninterrupted one.

fp16 training (``amp`` autocast or fp16 weights) scales the loss with ``torch.amp.GradScaler``; bf16 and fp32
do not need it.  On CUDA, runs use deterministic algorithms (:func:`deterministic_cuda`), so two runs with the
same seed, and a resumed run, give bit-identical numbers on the same GPU type and software.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from bench.errors import BenchError
from bench.method import Checkpointer, Context, TrainData


def lr_at_epoch(epoch: int, max_epoch: int, lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate used during 0-indexed ``epoch`` (Dassl's ConstantWarmupScheduler around CosineAnnealingLR)."""
    if epoch < warmup_epochs:
        return warmup_lr
    k = epoch - warmup_epochs
    return lr * (1 + math.cos(math.pi * k / max_epoch)) / 2


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random batches of indices; partial batches are dropped unless the whole set is smaller than one batch."""
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        return [order]
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


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
    """Train ``module``'s parameters that require grad with the reference recipe; returns {"loss": per-epoch means}."""
    device = torch.device(ctx.device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = grad_scaler(getattr(ctx.backbone, "precision", "fp32"), device)
    gen = torch.Generator().manual_seed(int(ctx.seed or 0))
    ck = ctx.checkpointer
    every_steps = int(getattr(ck, "every_steps", 0) or 0)
    every_s = float(getattr(ck, "every_s", 0) or 0)
    history: list[float] = []
    start_epoch, start_step, partial = 0, 0, (0.0, 0)
    skipped = 0  # fp16 steps the loss scaler skipped (inf/nan gradients)
    state = ck.load()
    if state is not None:
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        history = list(state["loss"])
        start_epoch, start_step = int(state["epoch"]), int(state.get("step", 0))
        partial = (float(state.get("epoch_total", 0.0)), int(state.get("epoch_count", 0)))
        skipped = int(state.get("skipped_steps", 0))
        if state.get("rng") is not None:
            set_rng_states(state["rng"], device)
        where = "training complete" if start_epoch >= epochs else f"epoch {start_epoch}/{epochs}" + (
            f", step {start_step}" if start_step else "")
        ctx.log(f"resumed from checkpoint at {where}")

    def save(epoch: int, step: int, gen_state: torch.Tensor, total: float, count: int, why: str) -> None:
        if type(ck).save is Checkpointer.save:  # the default keeps nothing: nothing to say
            return
        ck.save({"module": module.state_dict(), "optimizer": opt.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "generator": gen_state,
                 "loss": list(history), "epoch": epoch, "step": step, "epoch_total": total, "epoch_count": count,
                 "skipped_steps": skipped, "rng": rng_states(device)})
        ctx.log(f"checkpoint at epoch {epoch}/{epochs}" + (f", step {step}" if step else "") + f" ({why})")

    labels = train.labels.to(device)
    module.train()
    last_save, steps_since = time.monotonic(), 0
    with STOP.training():
        for epoch in range(start_epoch, epochs):
            for group in opt.param_groups:
                group["lr"] = lr_at_epoch(epoch, epochs, lr, warmup_epochs, warmup_lr)
            resume = epoch == start_epoch
            if not (resume and start_step):  # at an epoch boundary: encoding this view may take minutes
                with STOP.consistent(lambda: save(epoch, 0, gen.get_state(), 0.0, 0, "preemption")):
                    feats = train.view(epoch % train.n_views).to(device)
            else:
                feats = train.view(epoch % train.n_views).to(device)
            epoch_gen = gen.get_state()
            order = batches(len(labels), batch_size, gen)
            total, count = partial if resume else (0.0, 0)
            for step in range(start_step if resume else 0, len(order)):
                idx = order[step].to(device)
                try:
                    loss = loss_fn(feats[idx], labels[idx])
                    opt.zero_grad(set_to_none=True)
                    if scaler is None:
                        loss.backward()
                        opt.step()
                    else:
                        scale = scaler.get_scale()
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                        skipped += int(scaler.get_scale() < scale)
                except RuntimeError as e:
                    if "use_deterministic_algorithms" not in str(e):
                        raise
                    raise BenchError(f"{str(e).splitlines()[0][:200]} (set BENCH_DETERMINISTIC=warn to allow "
                                     f"non-deterministic CUDA ops)") from None
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                steps_since += 1
                why = ("preemption" if STOP.requested else
                       "steps" if every_steps and steps_since >= every_steps else
                       "time" if every_s and time.monotonic() - last_save >= every_s else None)
                if why and step + 1 < len(order):  # mid-epoch (an epoch's last step is saved below)
                    save(epoch, step + 1, epoch_gen, total, count, why)
                    last_save, steps_since = time.monotonic(), 0
                    if why == "preemption":
                        STOP.release()  # submitit: requeue and exit
            history.append(total / max(count, 1))
            done = epoch + 1
            periodic = ctx.checkpoint_every and done % ctx.checkpoint_every == 0
            why = ("end of training" if done == epochs else "preemption" if STOP.requested else
                   "epochs" if periodic else "steps" if every_steps and steps_since >= every_steps else
                   "time" if every_s and time.monotonic() - last_save >= every_s else None)
            if why:
                save(done, 0, gen.get_state(), 0.0, 0, why)
                last_save, steps_since = time.monotonic(), 0
                if STOP.requested:
                    STOP.release()
    module.eval()
    stats = {"loss": history, "epochs": epochs}
    if scaler is not None:
        stats["loss_scale"] = {"final": float(scaler.get_scale()), "skipped_steps": skipped}
    return stats

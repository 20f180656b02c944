"""The reference optimisation recipe as plain functions (no trainer classes).

SGD (lr, momentum 0.9, weight decay 5e-4), one epoch of constant warm-up at 1e-5, then cosine annealing stepped
per epoch and shifted by one epoch (docs/protocol.md §6), random batch order with ``drop_last`` exactly when the
set holds at least one batch.  Epoch ``e`` trains on cached augmented view ``e % n_views``.  Training state
(parameters, optimiser, epoch, RNG, loss history) is checkpointed through ``ctx.checkpointer`` every
``ctx.checkpoint_every`` epochs and restored on start, so a requeued job continues where it stopped.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bench.method import Context, TrainData


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
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(ctx.seed or 0))
    history: list[float] = []
    start = 0
    state = ctx.checkpointer.load()
    if state is not None:
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        history = list(state["loss"])
        start = int(state["epoch"])
        ctx.log(f"resumed from checkpoint at epoch {start}/{epochs}")
    labels = train.labels.to(ctx.device)
    module.train()
    for epoch in range(start, epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at_epoch(epoch, epochs, lr, warmup_epochs, warmup_lr)
        feats = train.view(epoch % train.n_views).to(ctx.device)
        total, count = 0.0, 0
        for idx in batches(len(labels), batch_size, gen):
            loss = loss_fn(feats[idx], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        done = epoch + 1
        if ctx.checkpoint_every and done % ctx.checkpoint_every == 0 and done < epochs:
            ctx.checkpointer.save(
                {"module": module.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                 "loss": history, "epoch": done}
            )
            ctx.log(f"checkpoint at epoch {done}/{epochs}")
    module.eval()
    return {"loss": history, "epochs": epochs}

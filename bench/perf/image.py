"""The image-side part of ``bench perf`` (methods with ``trains_on = "images"``).

(c) Images per second of the image-side training step (IVLP's deep prompts in both towers, forward + backward +
    SGD step on augmented batches from the stream) with DataLoader worker processes versus decoding in the
    training process; the first epoch (worker start-up) is not timed.
(d) The text encoder with deep text prompts, forward + backward, cut at the last end-of-text token versus the
    full context length, with the largest absolute difference of the features (exact up to float rounding).
"""

from __future__ import annotations

import time

import torch


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure_image_side(args, bb, root, paths, labels, classnames, spec) -> dict:
    from bench.engine.imagestream import ImageTrainData, worker_count
    from bench.method import Context
    from bench.model.prompted import check_vit, encode_text
    from bench.methods.ivlp import IVLP

    try:
        check_vit(bb)
    except Exception as e:  # noqa: BLE001 - a non-ViT backbone: nothing to measure here
        return {"image_side_skipped": str(e)}
    hp = IVLP.default_hparams("base2new", args.dataset, args.shots)
    ctx = Context(backbone=bb, classnames=classnames, template=spec.template,
                  dataset=args.dataset, hparams=hp, seed=1, log=lambda m: None)
    out: dict = {}
    workers = args.workers if args.workers else max(1, worker_count())
    for name, w in (("workers", workers), ("single", 0)):
        method = IVLP(ctx)
        opt = torch.optim.SGD(method.prompts.parameters(), lr=hp["lr"], momentum=0.9)
        data = ImageTrainData(root=root, relpaths=paths, labels=labels, backbone=bb, run_seed=1, workers=w)
        loader = data.loader(hp["batch_size"])
        n = 0
        for epoch in range(args.epochs + 1):
            if epoch == 1:
                _sync(bb.device)
                t0 = time.perf_counter()
            for batch in loader.epoch(epoch):
                loss = method.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += len(batch.labels) if epoch else 0
        _sync(bb.device)
        out[f"image_step_{name}_ips"] = n / (time.perf_counter() - t0)
    out["image_workers"] = workers
    out["image_batch"] = hp["batch_size"]
    out["image_speedup"] = out["image_step_workers_ips"] / out["image_step_single_ips"]

    # (d) deep text prompts: cut vs uncut
    names = [classnames[i % len(classnames)] for i in range(args.text_classes)]
    method = IVLP(ctx)
    p = method.prompts
    tokens = bb.tokenize([f"{p.ctx_init} {n.replace('_', ' ')}." for n in names])
    base = bb.token_embedding(tokens)

    def step(cut):
        embeds = torch.cat([base[:, :1], p.text_ctx.expand(len(names), -1, -1), base[:, 1 + p.n_text:]], dim=1)
        return encode_text(bb, embeds, tokens, list(p.text_deep), cut=cut)

    times, feats = {}, {}
    for cut in (True, False):
        step(cut).sum().backward()  # warm-up
        _sync(bb.device)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            p.zero_grad(set_to_none=True)
            step(cut).float().pow(2).sum().backward()
        _sync(bb.device)
        times[cut] = (time.perf_counter() - t0) / args.reps
        with torch.no_grad():
            feats[cut] = step(cut)
    out.update(deep_text_len_cut=int(tokens.argmax(1).max()) + 1, deep_text_len_uncut=int(tokens.shape[1]),
               deep_text_depth=len(p.text_deep) + 1, deep_text_cut_s=times[True], deep_text_uncut_s=times[False],
               deep_text_speedup=times[False] / times[True],
               deep_text_max_abs_diff=float((feats[True] - feats[False]).abs().max()),
               deep_text_max_abs=float(feats[False].abs().max()))
    return out


def report_image_side(m: dict) -> list[str]:
    if "image_side_skipped" in m:
        return [f"image-side step: skipped ({m['image_side_skipped']})"]
    if "image_speedup" not in m:
        return []
    return [
        f"image-side training step (IVLP deep prompts, batch {m['image_batch']}): "
        f"{m['image_step_single_ips']:.1f} images/s in one process, "
        f"{m['image_step_workers_ips']:.1f} images/s with {m['image_workers']} DataLoader worker(s)",
        f"  -> image-side speed-up {m['image_speedup']:.2f}x",
        f"deep text prompts (depth {m['deep_text_depth']}) fwd+bwd on {m['text_prompts']} prompts: uncut "
        f"(L={m['deep_text_len_uncut']}) {1e3 * m['deep_text_uncut_s']:.2f} ms, cut (L={m['deep_text_len_cut']}) "
        f"{1e3 * m['deep_text_cut_s']:.2f} ms",
        f"  -> speed-up {m['deep_text_speedup']:.2f}x; max |cut - uncut| = {m['deep_text_max_abs_diff']:.2e} "
        f"(features up to {m['deep_text_max_abs']:.2f})",
    ]

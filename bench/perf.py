"""``bench perf``: measure the two exact-or-validated speed-ups of PERFORMANCE.md in one process.

(a) A CoOp training epoch on cached image features (bench.features.FeatureCache: the views are encoded once, the
    timed pass reads them back through a fresh cache object, as a new run would) versus the reference's loop,
    which decodes, augments and encodes every training image in every epoch.
(b) The text encoder on n_cls learned prompts, forward + backward, cut at the last end-of-text token versus the
    full context length, with the largest absolute difference between the two feature sets (should be ~1e-6).

Defaults need nothing on disk: a synthetic dataset tree (bench.synth) in a temporary folder and the tiny random
backbone (``bench perf --backbone tiny-test``); ``--backbone ViT-B-16 --pretrained openai --data-root DATA
--dataset caltech101`` measures the real thing.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path


def add_command(sub) -> None:
    p = sub.add_parser("perf", help="time cached vs uncached CoOp epochs and cut vs uncut text encoding")
    p.add_argument("--backbone", default="tiny-test", help="open_clip architecture (default tiny-test)")
    p.add_argument("--pretrained", help="pretrained tag or checkpoint (default: random weights)")
    p.add_argument("--data-root", help="real datasets in CoOp's layout (default: a synthetic tree in a temp folder)")
    p.add_argument("--dataset", default="caltech101", help="dataset key (default caltech101)")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--classes", type=int, default=10, help="classes of the synthetic dataset (default 10)")
    p.add_argument("--image-size", type=int, help="synthetic image side in pixels (default ~8/7 of the model's)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per path (default 2)")
    p.add_argument("--text-classes", type=int, default=100, help="prompts per text-encoder call (default 100)")
    p.add_argument("--reps", type=int, default=5, help="timed text-encoder repetitions (default 5)")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--workers", type=int, help="image-loading workers (default: as the feature cache)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest for tiny models)")
    p.add_argument("--json", action="store_true", help="also print the measurements as one JSON line")
    p.set_defaults(func=cmd_perf)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _train_items(args, backbone, tmp: Path):
    """(dataset root, relative paths, labels, classnames, description) of a K-shot training set."""
    from bench.data import fewshot_sample, load_splits

    if args.data_root:
        data_root, what = Path(args.data_root), "real"
    else:
        from bench.synth import make_dataset_tree

        data_root, what = tmp / "data", "synthetic"
        size = args.image_size or max(64, backbone.image_size * 8 // 7)
        make_dataset_tree(args.dataset, data_root, n_classes=args.classes, per_class=(args.shots, 1, 1),
                          image_size=size)
    splits = load_splits(args.dataset, data_root)
    train = fewshot_sample(splits, args.shots, 1)["train"]
    return splits.root, [it.path for it in train], [it.label for it in train], splits.classnames, what


def measure(args) -> dict:
    import torch

    from bench import log
    from bench.backbone import create_backbone
    from bench.data import get_spec
    from bench.features import FeatureCache, ImageList
    from bench.method import Context, TrainData
    from bench.train import batches, fit_epochs, lr_at_epoch
    from methods._prompts import PromptLearner
    from methods.coop import CoOp

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pretrained = None if args.pretrained in (None, "none", "random") else args.pretrained
    bb = create_backbone(args.backbone, pretrained, device=device, precision=args.precision)
    spec = get_spec(args.dataset)
    out: dict = {"backbone": bb.identity, "device": str(bb.device), "precision": bb.precision}
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmpdir:
        tmp = Path(tmpdir)
        root, paths, labels_list, classnames, what = _train_items(args, bb, tmp)
        labels = torch.tensor(labels_list, dtype=torch.long)
        out.update(dataset=f"{args.dataset} ({what})", classes=len(classnames), images=len(paths),
                   epochs=args.epochs)
        hp = CoOp.default_hparams("fewshot", args.dataset, args.shots)
        ctx = Context(backbone=bb, classnames=classnames, template=spec.template,
                      kgcoop_template=spec.kgcoop_template, dataset=args.dataset, hparams=hp, seed=1,
                      log=lambda m: None)
        opt_kw = {"batch_size": hp["batch_size"], "lr": hp["lr"]}

        # (a) cached: encode the views once, then time epochs reading them through a fresh cache object
        workers = args.workers
        fill = FeatureCache(bb, root=tmp / "features", workers=workers)
        t0 = time.perf_counter()
        for v in range(args.epochs):
            fill.get(root, paths, "train", v)
        _sync(bb.device)
        out["cache_fill_s"] = time.perf_counter() - t0
        cache = FeatureCache(bb, root=tmp / "features", workers=workers)
        data = TrainData(labels=labels, view=lambda v: cache.get(root, paths, "train", v), n_views=args.epochs,
                         eval_features=torch.zeros(0))
        method = CoOp(ctx)
        method.loss(torch.zeros(1, bb.embed_dim, device=bb.device), labels[:1].to(bb.device))  # build prompts
        t0 = time.perf_counter()
        fit_epochs(method.learner, method.loss, data, ctx, epochs=args.epochs, **opt_kw)
        _sync(bb.device)
        out["cached_epoch_s"] = (time.perf_counter() - t0) / args.epochs
        if cache.encoded:
            raise RuntimeError("the timed cached pass encoded images: the feature cache did not hit")

        # (b') the reference: decode + augment + encode every image in every epoch
        method = CoOp(ctx)
        method.loss(torch.zeros(1, bb.embed_dim, device=bb.device), labels[:1].to(bb.device))
        params = [p for p in method.learner.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        ds = ImageList(root, paths, bb.train_transform, None)
        gen = torch.Generator().manual_seed(1)
        n_workers = fill.workers if workers is None else workers
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at_epoch(epoch, args.epochs, hp["lr"])
            order = batches(len(paths), hp["batch_size"], gen)
            loader = torch.utils.data.DataLoader(ds, batch_sampler=[o.tolist() for o in order],
                                                 num_workers=n_workers, collate_fn=_stack)
            for (images, ys) in zip(loader, order):
                feats = bb.encode_image(images.to(bb.device))
                loss = method.loss(feats, labels[ys].to(bb.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _sync(bb.device)
        out["uncached_epoch_s"] = (time.perf_counter() - t0) / args.epochs
        out["epoch_speedup"] = out["uncached_epoch_s"] / out["cached_epoch_s"]

        # (b) text encoder: cut vs uncut, forward + backward on n_cls prompts
        names = [classnames[i % len(classnames)] for i in range(args.text_classes)]
        times, feats = {}, {}
        for cut in (True, False):
            learner = PromptLearner(bb, names, n_ctx=16, seed=1, cut=cut)
            ps = learner.prompts(names)
            learner.text_features(names).sum().backward()  # warm-up
            _sync(bb.device)
            t0 = time.perf_counter()
            for _ in range(args.reps):
                learner.zero_grad(set_to_none=True)
                learner.text_features(names).float().pow(2).sum().backward()
            _sync(bb.device)
            times[cut] = (time.perf_counter() - t0) / args.reps
            with torch.no_grad():
                feats[cut] = learner.text_features(names)
            out[f"text_len_{'cut' if cut else 'uncut'}"] = int(ps.tokens.shape[1])
        out["text_prompts"] = len(names)
        out["text_cut_s"], out["text_uncut_s"] = times[True], times[False]
        out["text_speedup"] = times[False] / times[True]
        out["text_max_abs_diff"] = float((feats[True] - feats[False]).abs().max())
        out["text_max_abs"] = float(feats[False].abs().max())

        # (c, d) the image-side path: DataLoader workers vs one process, deep text prompts cut vs uncut
        from bench.perf_image import measure_image_side

        out.update(measure_image_side(args, bb, root, paths, labels, classnames, spec))
    log.info("perf done")
    return out


def _stack(batch):
    import torch

    for _, err in batch:
        if err:
            from bench.errors import BenchError

            raise BenchError(err)
    return torch.stack([x for x, _ in batch])


def report(m: dict) -> str:
    from bench.perf_image import report_image_side

    return "\n".join([
        f"backbone {m['backbone']} on {m['device']} ({m['precision']}); dataset {m['dataset']}: "
        f"{m['classes']} classes, {m['images']} training images; {m['epochs']} timed epochs per path",
        f"feature cache fill (one-off, shared by all methods/seeds): {m['cache_fill_s']:.3f} s "
        f"for {m['epochs']} views",
        f"CoOp epoch, images decoded + augmented + encoded every epoch (reference): {m['uncached_epoch_s']:.4f} s",
        f"CoOp epoch, cached features (fresh cache object, read from disk):       {m['cached_epoch_s']:.4f} s",
        f"  -> epoch speed-up {m['epoch_speedup']:.1f}x",
        f"text encoder fwd+bwd on {m['text_prompts']} prompts: uncut (L={m['text_len_uncut']}) "
        f"{1e3 * m['text_uncut_s']:.2f} ms, cut (L={m['text_len_cut']}) {1e3 * m['text_cut_s']:.2f} ms",
        f"  -> text speed-up {m['text_speedup']:.2f}x; max |cut - uncut| = {m['text_max_abs_diff']:.2e} "
        f"(features up to {m['text_max_abs']:.2f})",
        *report_image_side(m),
    ])


def cmd_perf(args) -> int:
    from bench.errors import BenchError

    if args.shots < 1 or args.epochs < 1 or args.reps < 1 or args.text_classes < 1 or args.classes < 1:
        raise BenchError("--shots, --epochs, --reps, --classes and --text-classes must be >= 1")
    m = measure(args)
    print(report(m))
    if args.json:
        print(json.dumps(m, sort_keys=True))
    return 0

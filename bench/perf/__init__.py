"""``bench perf``: where a CoOp run's time goes, measured in one command (ratios within one process).

(a) A cold CoOp run (empty feature cache: every augmented view and test image encoded, then trained and tested)
    versus a reference-shaped loop on the same images and weights: decode + augment + encode every training image
    in every epoch, in one process, then decode + encode the test set. The cold run is broken down into
    decoding, augmentation (CPU seconds summed over the DataLoader workers), encoding and writing.
(b) The same grid (CoOp, several seeds) as two fresh ``bench run`` processes on one cache: the first cold,
    the second warm (results deleted, cache kept); the warm process's cache hits, encodes and writes; and the
    start-up time of the run path.
(c) The text encoder on n_cls learned prompts, forward + backward, cut at the last end-of-text token versus the
    full context length, with the largest absolute difference between the two feature sets (~1e-6).
(c, d) The image-side path (:mod:`bench.perf.image`); (e) a CLIP-LoRA training step (:mod:`bench.perf.lora`).

Defaults need nothing on disk: a synthetic OxfordPets-layout tree (384-px JPEGs) in a temporary folder and
``perf-vit`` (a tiny ViT at 224 px, patch 32, with fixed random weights saved as a checkpoint so every process
has the same model). ``--backbone ViT-B-16 --pretrained openai --data-root DATA --dataset oxford_pets``
measures the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_command(sub) -> None:
    p = sub.add_parser("perf", help="time a cold CoOp run vs the reference's loop, warm vs cold across processes, "
                                    "and cut vs uncut text encoding")
    p.add_argument("--backbone", default="perf-vit", help="open_clip architecture (default perf-vit: tiny, 224 px)")
    p.add_argument("--pretrained", help="pretrained tag or checkpoint (default: fixed random weights)")
    p.add_argument("--data-root", help="real datasets in CoOp's layout (default: a synthetic tree in a temp folder)")
    p.add_argument("--dataset", default="oxford_pets", help="dataset key (default oxford_pets)")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--classes", type=int, default=8, help="classes of the synthetic dataset (default 8)")
    p.add_argument("--test-per-class", type=int, default=10, help="synthetic test images per class (default 10)")
    p.add_argument("--image-size", type=int, default=384, help="synthetic image side in pixels (default 384)")
    p.add_argument("--epochs", type=int, default=50, help="CoOp epochs = augmented views per image (default 50)")
    p.add_argument("--seeds", default="1,2,3", help="seeds of the cross-process grid (default 1,2,3)")
    p.add_argument("--no-grid", action="store_true", help="skip the cross-process grid (two `bench run`s)")
    p.add_argument("--text-classes", type=int, default=100, help="prompts per text-encoder call (default 100)")
    p.add_argument("--reps", type=int, default=5, help="timed text-encoder repetitions (default 5)")
    p.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--workers", type=int, help="decoding workers of the cache (default: the CPUs of this process)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="also print the measurements as one JSON line")
    p.set_defaults(func=cmd_perf)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _fixture(args, tmp: Path):
    """(data root, pretrained for `bench run`): the user's, or a synthetic tree + a saved random checkpoint."""
    import torch

    pretrained = args.pretrained
    if pretrained in (None, "none", "random"):
        import open_clip

        from bench import log
        from bench.model.backbone import RANDOM_INIT_MESSAGE  # (importing bench.model.backbone registers our architectures)

        torch.manual_seed(0)
        pretrained = str(tmp / f"{args.backbone}.pt")
        with log.drop_log_messages(RANDOM_INIT_MESSAGE):  # random on purpose: these are the fixture's weights
            torch.save(open_clip.create_model(args.backbone).state_dict(), pretrained)
    if args.data_root:
        return Path(args.data_root), pretrained, "real"
    from bench.data.synth import make_dataset_tree

    make_dataset_tree(args.dataset, tmp / "data", n_classes=args.classes,
                      per_class=(args.shots, min(args.shots, 4), args.test_per_class), image_size=args.image_size)
    return tmp / "data", pretrained, f"synthetic, {args.image_size}-px JPEGs"


def _wall(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        from bench.errors import BenchError

        raise BenchError(f"perf: {' '.join(cmd[:6])} ... failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - t0


def measure(args) -> dict:
    import torch

    from bench import log
    from bench.model.backbone import create_backbone
    from bench.data import fewshot_sample, get_spec, load_splits
    from bench.features import FeatureCache, ImageList
    from bench.method import Context
    from bench.engine.runner import build_train_data, metrics
    from bench.engine.loop import batches, lr_at_epoch
    from bench.methods._prompts import PromptLearner
    from bench.methods.coop import CoOp

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["BENCH_CACHE"] = str(tmp / "cache")  # few-shot samples etc. stay in the temp folder
        data_root, pretrained, what = _fixture(args, tmp)
        bb = create_backbone(args.backbone, pretrained, device=device, precision=args.precision)
        spec = get_spec(args.dataset)
        splits = load_splits(args.dataset, data_root)
        root, test = splits.root, splits.test
        test_labels = torch.tensor([it.label for it in test], dtype=torch.long)
        train_items = fewshot_sample(splits, args.shots, 1)["train"]
        hp = {**CoOp.default_hparams("fewshot", args.dataset, args.shots), "epochs": args.epochs}
        config = {"method": "coop", "views": args.epochs,
                  "train": {"dataset": args.dataset, "shots": args.shots, "seed": 1, "classes": "all"}}
        out.update(backbone=bb.identity, device=str(bb.device), precision=bb.precision,
                   dataset=f"{args.dataset} ({what})", classes=len(splits.classnames), images=len(train_items),
                   test_images=len(test), epochs=args.epochs, batch_size=hp["batch_size"])

        def context():
            return Context(backbone=bb, classnames=splits.classnames, template=spec.template,
                           dataset=args.dataset, hparams=dict(hp), seed=1,
                           log=lambda m: None)

        # (a) cold run in this process: an empty cache, everything encoded once, then trained and tested
        log.info("perf: cold run")
        cache = FeatureCache(bb, root=tmp / "cold", workers=args.workers)
        t0 = time.perf_counter()
        train, _ = build_train_data(config, bb, cache, data_root)
        method = CoOp(context())
        fill_before, t_fit = cache.stats["fill_s"], time.perf_counter()
        method.fit(train)  # its first view() fills every training view in one pass
        out["cold_train_s"] = time.perf_counter() - t_fit - (cache.stats["fill_s"] - fill_before)
        t_test = time.perf_counter()
        with torch.no_grad():
            logits = method.logits(cache.get(root, [it.path for it in test], "eval").to(bb.device),
                                   splits.classnames)
        _sync(bb.device)
        out["cold_test_s"] = time.perf_counter() - t_test
        out["cold_run_s"] = time.perf_counter() - t0
        out["cold_top1"] = metrics(logits, test_labels, splits.classnames)["top1"]
        out["cache"] = dict(cache.stats)
        out["workers"] = cache.workers
        out["cached_epoch_s"] = out["cold_train_s"] / args.epochs

        # (a') the reference-shaped loop: decode + augment + encode every image every epoch, one process
        log.info("perf: reference-shaped loop")
        ctx = context()
        method = CoOp(ctx)
        labels = torch.tensor([it.label for it in train_items], dtype=torch.long)
        paths = [it.path for it in train_items]
        method.loss(torch.zeros(1, bb.embed_dim, device=bb.device), labels[:1].to(bb.device))  # build prompts
        params = [p for p in method.learner.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        gen = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at_epoch(epoch, args.epochs, hp["lr"])
            ds = ImageList(root, paths, bb.train_transform, view=epoch, seed=1)
            for idx in batches(len(paths), hp["batch_size"], gen):
                images = _stack([ds[i] for i in idx.tolist()])
                loss = method.loss(bb.encode_image(images), labels[idx].to(bb.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        _sync(bb.device)
        out["reference_epoch_s"] = (time.perf_counter() - t0) / args.epochs
        ds = ImageList(root, [it.path for it in test], bb.eval_transform)
        with torch.no_grad():
            feats = torch.cat([bb.encode_image(_stack([ds[i] for i in range(s, min(s + 100, len(ds)))]))
                               for s in range(0, len(ds), 100)])
            method.logits(feats, splits.classnames)
        _sync(bb.device)
        out["reference_run_s"] = time.perf_counter() - t0
        out["cold_vs_reference"] = out["cold_run_s"] / out["reference_run_s"]
        out["epoch_speedup"] = out["reference_epoch_s"] / out["cached_epoch_s"]

        # (b) the grid as two fresh processes on one cache
        if not args.no_grid:
            log.info("perf: the grid cold and warm in fresh processes")
            env = {**os.environ, "BENCH_CACHE": str(tmp / "xcache")}
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            base = [sys.executable, "-m", "bench.cli", "run", "--method", "coop", "--datasets", args.dataset,
                    "--shots", str(args.shots), "--seeds", args.seeds, "--set", f"epochs={args.epochs}",
                    "--backbone", args.backbone, "--pretrained", pretrained, "--data-root", str(data_root),
                    "--precision", args.precision]
            stats = tmp / "stats.jsonl"
            out["grid_cold_s"] = _wall(base + ["--results", str(tmp / "res-cold")],
                                       {**env, "BENCH_FEATURE_STATS": str(tmp / "cold.jsonl")})
            out["grid_warm_s"] = _wall(base + ["--results", str(tmp / "res-warm")],
                                       {**env, "BENCH_FEATURE_STATS": str(stats)})
            warm = [json.loads(ln) for ln in stats.read_text().splitlines()]
            out["grid_warm_hits"] = sum(s["hits"] for s in warm)
            out["grid_warm_encoded"] = sum(s["encoded"] for s in warm)
            out["grid_warm_files_written"] = sum(s["files_written"] for s in warm)
            out["grid_speedup"] = out["grid_cold_s"] / out["grid_warm_s"]
            out["grid_runs"] = len(args.seeds.split(","))
            out["startup_import_s"] = _wall([sys.executable, "-c", "import bench.cli, bench.engine.runner, bench.model.backbone, "
                                             "bench.launch, bench.methods.coop"], env)
            out["startup_help_s"] = _wall([sys.executable, "-m", "bench.cli", "run", "--help"], env)

        # (c) text encoder: cut vs uncut, forward + backward on n_cls prompts
        names = [splits.classnames[i % len(splits.classnames)] for i in range(args.text_classes)]
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
        from bench.perf.image import measure_image_side

        out.update(measure_image_side(args, bb, root, paths, labels, splits.classnames, spec))

        # (e) a CLIP-LoRA training step vs a plain forward/backward of the same model
        from bench.perf.lora import measure_lora

        out.update(measure_lora(bb, splits.classnames, args.text_classes, reps=args.reps))
    log.info("perf done")
    return out


def _stack(items):
    from bench.data.images import collate
    from bench.errors import BenchError

    x, _, err, _, _ = collate(items)
    if err:
        raise BenchError(err)
    return x


def report(m: dict) -> str:
    from bench.perf.image import report_image_side
    from bench.perf.lora import report_lora

    c = m["cache"]
    lines = [
        f"backbone {m['backbone']} on {m['device']} ({m['precision']}); {m['dataset']}: {m['classes']} classes, "
        f"{m['images']} training images, {m['test_images']} test images; CoOp {m['epochs']} epochs, batch "
        f"{m['batch_size']}; decoding workers: {m['workers']}",
        f"cold run, empty cache (one process): {m['cold_run_s']:.2f} s = views + eval features "
        f"{c['fill_s']:.2f} s wall [decode {c['decode_s']:.2f} s + augment {c['augment_s']:.2f} s CPU (workers), "
        f"encode {c['encode_s']:.2f} s, write {c['write_s']:.2f} s; {c['encoded']} images encoded, "
        f"{c['files_written']} files] + training {m['cold_train_s']:.2f} s + rest",
        f"reference-shaped loop (decode + augment + encode every image every epoch, one process): "
        f"{m['reference_run_s']:.2f} s",
        f"  -> cold run / reference loop = {m['cold_vs_reference']:.2f} (target <= 1.0)",
        f"CoOp epoch on cached features {m['cached_epoch_s']:.4f} s vs reference epoch {m['reference_epoch_s']:.4f} s"
        f" -> epoch speed-up {m['epoch_speedup']:.1f}x",
    ]
    if "grid_cold_s" in m:
        lines += [
            f"grid of {m['grid_runs']} CoOp runs as `bench run` in a fresh process: cold cache {m['grid_cold_s']:.2f} s,"
            f" warm cache (filled by the cold process) {m['grid_warm_s']:.2f} s",
            f"  -> warm {m['grid_speedup']:.1f}x faster (target >= 5); warm process: {m['grid_warm_hits']} cache hits, "
            f"{m['grid_warm_encoded']} images encoded, {m['grid_warm_files_written']} files written",
            f"start-up: importing the run path {m['startup_import_s']:.2f} s; `bench run --help` "
            f"{m['startup_help_s']:.2f} s",
        ]
    lines += [
        f"text encoder fwd+bwd on {m['text_prompts']} prompts: uncut (L={m['text_len_uncut']}) "
        f"{1e3 * m['text_uncut_s']:.2f} ms, cut (L={m['text_len_cut']}) {1e3 * m['text_cut_s']:.2f} ms",
        f"  -> text speed-up {m['text_speedup']:.2f}x; max |cut - uncut| = {m['text_max_abs_diff']:.2e} "
        f"(features up to {m['text_max_abs']:.2f})",
        *report_image_side(m),
        *report_lora(m),
    ]
    return "\n".join(lines)


def cmd_perf(args) -> int:
    from bench.errors import BenchError

    if args.shots < 1 or args.epochs < 1 or args.reps < 1 or args.text_classes < 1 or args.classes < 1:
        raise BenchError("--shots, --epochs, --reps, --classes and --text-classes must be >= 1")
    m = measure(args)
    print(report(m))
    if args.json:
        print(json.dumps(m, sort_keys=True))
    return 0

"""Contrastive pretraining of the miniature CLIP (open_clip arch ``mini``) on procedural image-caption pairs.

Run once and cached: ``<cache_dir>/mini/<key>/mini_clip.pt`` (a plain state_dict that
``open_clip.create_model("mini", pretrained=str(path))`` loads), where ``key`` is a short hash of every
setting (renderer version, steps, batch, learning rates, seed, arch config, ...). ``ensure_checkpoint()``
trains if the file is missing and returns its path; ``python -m bench.mini.pretrain [--force]`` does the
same from a shell. There is no shorter "test" schedule: measured, 300 steps leave the pattern vocabulary
unlearned (MiniTextures zero-shot 2.5x chance), 500 steps give 5x; the tests use this same checkpoint.

Logit scale: a real CLIP's learned temperature ends at the clamp, 100, and the prompt-learning recipes
(CoOp's SGD at lr 0.002, KgCoOp's weight 8 on its cosine term) are tuned for that sharp softmax. A tiny model
trained for minutes ends far lower (~24, from open_clip's init of 1/0.07 = 14.3, even with its own 10x
learning rate), and at that temperature a learned context barely specialises to the classes it is trained
on: measured on the base-to-new protocol with an earlier checkpoint (learned scale 26), CoOp *gained* on the
new classes (82.6 vs zero-shot's 81.7), unlike on every real dataset; the same weights with scale 100 gave
77.5 (3 seeds). So the checkpoint is saved with CLIP's final temperature, ``final_logit_scale`` = 100
(the learned value is logged and kept in ``meta.json``). Zero-shot and linear-probe predictions do not
depend on it (an argmax over cosines; features are unscaled); the prompt learners' softmax does.

Speed: the image tower is ~65 % of a step; FLIP's patch dropout (75 % of the 64 patch tokens dropped, the last
10 % of the steps unmasked) makes the 500 steps ~1.6x faster on CPU. Measured: unmasking only the last 4 % (saving
~30 s) left CoOp's gain on the magnified MiniFabrics-Zoomed as large as on its source (+16.5 vs +5.8), so 10 %.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench import log
from bench.fileio import atomic_open, file_lock
from bench.paths import PACKAGE_DIR, cache_dir

from . import render as R

ARCH = "mini"
CONFIG_PATH = PACKAGE_DIR / "model_configs" / "mini.json"
CHECKPOINT_NAME = "mini_clip.pt"

# every setting that changes the checkpoint is in here (and so in the key)
DEFAULT_SETTINGS: dict = {
    "steps": 500,
    "batch": 128,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "warmup": 30,
    "betas": (0.9, 0.98),
    "eps": 1e-6,
    "init_logit_scale": round(math.log(1 / 0.07), 6),
    "logit_scale_lr_mult": 10.0,
    "max_logit_scale": 100.0,
    "visual_pos_lr_mult": 30.0,
    "focus_captions": True,      # a second, single-attribute caption per image (render.focus_captions)
    "patch_dropout": 0.75,       # FLIP-style token dropout in the image tower (a masked step costs 0.53x) ...
    "unmasked_frac": 0.1,        # ... except for the last fraction of the steps (the tower adapts to all tokens)
    "final_logit_scale": 100.0,  # the temperature the checkpoint is saved with (see the module docstring)
    "seed": 0,
}


def settings() -> dict:
    s = dict(DEFAULT_SETTINGS)
    s["renderer_version"] = R.VERSION
    s["arch"] = ARCH
    s["arch_config"] = json.loads(CONFIG_PATH.read_text())
    return s


def cache_key(s: dict) -> str:
    blob = json.dumps(s, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def register_arch() -> None:
    """Make open_clip know the ``mini`` arch (bench.model.backbone does this too; registering twice is harmless)."""
    import open_clip

    if ARCH not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


@contextmanager
def _threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> normalised float (n, 3, H, W), as ToTensor + Normalize(CLIP mean/std)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - _MEAN) / _STD


def encode_text_cut(model, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text, running only the first max(EOT)+1 positions (exact under the causal mask)."""
    eot = tokens.argmax(dim=-1)
    L = int(eot.max()) + 1
    x = model.token_embedding(tokens[:, :L]) + model.positional_embedding[:L]
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot]
    return x @ model.text_projection if not isinstance(model.text_projection, torch.nn.Linear) else model.text_projection(x)


class _Tokens:
    """The model's tokenizer with a cache (the caption vocabulary is small)."""

    def __init__(self):
        import open_clip

        self.tok = open_clip.get_tokenizer(ARCH)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, row in zip(missing, self.tok(missing)):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in texts])


def pretrain(s: dict, out_path: Path, threads: int | None = None) -> dict:
    """Train the mini CLIP with the settings ``s``; write the state_dict to ``out_path``; return metadata."""
    import open_clip
    from open_clip.loss import ClipLoss
    from open_clip.transformer import PatchDropout

    register_arch()
    threads = threads or min(os.cpu_count() or 1, 8)
    with _threads(threads):
        torch.manual_seed(s["seed"])
        with log.drop_log_messages("Model initialized randomly"):  # pretraining starts from random weights on purpose
            model = open_clip.create_model(ARCH, pretrained=None, init_logit_scale=s["init_logit_scale"])
        model.train()
        tokens = _Tokens()
        decay, no_decay, vis_pos = [], [], []
        for n, p in model.named_parameters():
            if n == "logit_scale":
                continue
            if n in ("visual.positional_embedding", "visual.class_embedding"):
                vis_pos.append(p)
                continue
            (no_decay if p.ndim < 2 or "ln" in n or "bias" in n or "embedding" in n else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": s["weight_decay"], "lr_mult": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
            # a from-scratch ViT on 32 px spends its first ~100 steps on a plateau before it uses patch
            # positions (shape); a larger lr on the position/class embeddings shortens that plateau 2-3x
            {"params": vis_pos, "weight_decay": 0.0, "lr_mult": s["visual_pos_lr_mult"]},
            {"params": [model.logit_scale], "weight_decay": 0.0, "lr_mult": s["logit_scale_lr_mult"]},
        ]
        opt = torch.optim.AdamW(groups, lr=s["lr"], betas=tuple(s["betas"]), eps=s["eps"])
        loss_fn = ClipLoss()
        max_ls = math.log(s["max_logit_scale"])
        steps, warm = s["steps"], s["warmup"]
        first_unmasked = steps - int(round(s["unmasked_frac"] * steps))
        if s["patch_dropout"] > 0:
            model.visual.patch_dropout = PatchDropout(s["patch_dropout"])
            model.visual.patch_dropout.train()
        t0 = time.time()
        t_render = 0.0
        losses = []
        for step in range(steps):
            lr = s["lr"] * ((step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            if step == first_unmasked:
                model.visual.patch_dropout = torch.nn.Identity()
            tr = time.time()
            rng = np.random.default_rng([s["seed"], step])
            attrs = R.sample_attributes(rng, s["batch"])
            images = to_tensor(R.render(attrs, rng))
            texts = [tokens(R.captions(attrs, rng))]
            if s["focus_captions"]:
                texts.append(tokens(R.focus_captions(attrs, rng)))
            t_render += time.time() - tr
            img_f = F.normalize(model.encode_image(images), dim=-1)
            loss = 0.0
            for text in texts:  # every image is a positive for each of its captions (one ClipLoss each)
                txt_f = F.normalize(encode_text_cut(model, text), dim=-1)
                loss = loss + loss_fn(img_f, txt_f, model.logit_scale.exp()) / len(texts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_ls)
            losses.append(loss.item())
            if (step + 1) % max(1, steps // 10) == 0 or step == 0:
                log.info(f"mini pretraining: step {step + 1}/{steps} loss {np.mean(losses[-50:]):.3f} "
                         f"logit_scale {model.logit_scale.exp().item():.1f} ({time.time() - t0:.0f}s)")
        model.eval()
        learned_logit_scale = model.logit_scale.exp().item()
        if s.get("final_logit_scale"):
            with torch.no_grad():
                model.logit_scale.fill_(math.log(s["final_logit_scale"]))
    meta = {
        "settings": s,
        "final_loss": float(np.mean(losses[-50:])),
        "logit_scale": model.logit_scale.exp().item(),
        "learned_logit_scale": learned_logit_scale,
        "train_seconds": round(time.time() - t0, 1),
        "render_seconds": round(t_render, 1),
        "threads": threads,
        "torch": torch.__version__,
    }
    with atomic_open(out_path.parent / "meta.json") as fh:  # meta first: the checkpoint's presence means done
        fh.write((json.dumps(meta, indent=2, default=list) + "\n").encode())
    with atomic_open(out_path) as fh:
        torch.save(model.state_dict(), fh)
    return meta


def checkpoint_path() -> tuple[str, Path]:
    key = cache_key(settings())
    return key, cache_dir() / "mini" / key / CHECKPOINT_NAME


def ensure_checkpoint() -> Path:
    """Path of the pretrained mini CLIP checkpoint; pretrains (once, cached on disk) if it is missing."""
    key, path = checkpoint_path()
    with file_lock(path):  # two commands started together train it once; the second waits, then loads it
        if path.is_file():
            log.info(f"mini CLIP: loading cached checkpoint key={key} path={path}")
            return path
        s = settings()
        log.info(f"mini CLIP: pretraining key={key} ({s['steps']} steps, batch {s['batch']}) -> {path}")
        meta = pretrain(s, path)
    log.info(f"mini CLIP: done in {meta['train_seconds']}s, logit scale {meta['logit_scale']:.1f} (learned "
             f"{meta['learned_logit_scale']:.1f}), "
             f"key={key} path={path}")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.mini.pretrain", description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    a = ap.parse_args(argv)
    key, path = checkpoint_path()
    if a.force and path.exists():
        path.unlink()
    print(ensure_checkpoint())


if __name__ == "__main__":
    main()

"""The LoRA part of ``bench perf``: images per second of a CLIP-LoRA training step, and where its time goes.

(e) On one batch of random images (the model's input size; decoding and augmentation are (c)'s subject) and the
    hand-crafted prompts of ``n_cls`` classes, each timed as the fastest of ``reps`` steps after a warm-up:

    * ``lora``: the CLIP-LoRA step (rank 2, q, k, v of every block of both towers): text features of all classes
      through the adapted text tower (cut at end-of-text) and image features, both with gradient, CE, backward,
      AdamW step (fp16 loss scaling where the backbone's precision asks for it);
    * ``plain``: a plain forward/backward of the same model, batch and prompts: open_clip's own forward with every
      weight trainable (a copy of the model), CE, backward (no optimiser step);
    * ``lora_vision``: the LoRA step on the image tower only (text features frozen, computed once);
    * ``text``: the adapted text tower alone over all classes, forward + backward;

    and the tokens each step sends through the adapted towers (text: classes × cut length; image: batch × tokens
    per image), the machine-independent part of the answer: at ImageNet's 1000 classes the text tower carries more
    tokens every step than a batch of 32 ViT-B/16 images (6 304).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(step, reps: int, device) -> float:
    """The fastest of ``reps`` steps after a warm-up (the least disturbed by other processes on the machine)."""
    step()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_lora(bb, classnames: list[str], n_cls: int, batch: int = 32, reps: int = 5) -> dict:
    """Seconds per step of each variant (module docstring) and images per second; {"lora_skipped": why} on a
    backbone LoRA cannot adapt."""
    from bench.engine.loop import grad_scaler, gradient_step
    from bench.errors import BenchError
    from bench.model.lora import LoRA
    from bench.model.prompted import encode_image, encode_text

    try:
        LoRA(bb)
    except BenchError as e:
        return {"lora_skipped": str(e)}
    names = [classnames[i % len(classnames)].replace("_", " ") for i in range(n_cls)]
    tokens = bb.tokenize([f"a photo of a {n}." for n in names])
    embeds = bb.token_embedding(tokens)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, bb.image_size, bb.image_size, generator=gen).to(bb.device)
    labels = torch.randint(0, n_cls, (batch,), generator=gen).to(bb.device)

    def ce(image, text):
        return F.cross_entropy(100 * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t(), labels)

    def lora_step(encoder: str):
        lora = LoRA(bb, rank=2, alpha=1.0, dropout=0.25, params="qkv", encoder=encoder)
        lora.train()
        opt = torch.optim.AdamW(lora.parameters(), lr=2e-4, weight_decay=1e-2)
        scaler = grad_scaler(bb.precision, bb.device)
        with torch.no_grad():
            frozen_text = encode_text(bb, embeds, tokens)

        def loss():
            with lora.applied():
                text = encode_text(bb, embeds, tokens) if lora.adapts_text else frozen_text
                return ce(encode_image(bb, images), text)

        return lambda: gradient_step(loss, (), opt, scaler)  # the training loop's own step

    def text_step():
        lora = LoRA(bb, encoder="text")
        lora.train()

        def step():
            with lora.applied():
                encode_text(bb, embeds, tokens).float().pow(2).sum().backward()
        return step

    model = copy.deepcopy(bb.model).requires_grad_(True)
    plain_tokens = tokens.to(bb.device)

    def plain_step():
        model.zero_grad(set_to_none=True)
        with bb._autocast():
            loss = ce(model.encode_image(images), model.encode_text(plain_tokens))
        loss.backward()

    t = {"lora": _timed(lora_step("both"), reps, bb.device), "plain": _timed(plain_step, reps, bb.device),
         "lora_vision": _timed(lora_step("vision"), reps, bb.device), "text": _timed(text_step(), reps, bb.device)}
    out = {"lora_step_s": t["lora"], "lora_plain_s": t["plain"], "lora_vision_s": t["lora_vision"],
           "lora_text_s": t["text"]}
    out.update(lora_batch=batch, lora_classes=n_cls, lora_text_len=int(tokens.argmax(1).max()) + 1,
               lora_context=int(tokens.shape[1]),
               lora_text_tokens=n_cls * (int(tokens.argmax(1).max()) + 1),
               lora_image_tokens=batch * int(bb.model.visual.positional_embedding.shape[0]),
               lora_ips=batch / t["lora"], lora_plain_ips=batch / t["plain"],
               lora_vision_ips=batch / t["lora_vision"],
               lora_text_share=min(1.0, t["text"] / t["lora"]))
    return out


def report_lora(m: dict) -> list[str]:
    if "lora_skipped" in m:
        return [f"LoRA step: skipped ({m['lora_skipped']})"]
    if "lora_ips" not in m:
        return []
    return [
        f"CLIP-LoRA training step (rank 2, q/k/v, both towers; batch {m['lora_batch']}, {m['lora_classes']} classes, "
        f"text cut at L={m['lora_text_len']}): {m['lora_ips']:.1f} images/s vs {m['lora_plain_ips']:.1f} images/s for a "
        f"plain forward/backward of the same model (open_clip's forward, text at L={m['lora_context']}, every weight "
        f"trainable) ({m['lora_ips'] / m['lora_plain_ips']:.2f}x)",
        f"  -> image tower only (text frozen): {m['lora_vision_ips']:.1f} images/s; the adapted text tower over all "
        f"classes, fwd+bwd alone, {1e3 * m['lora_text_s']:.1f} ms = {100 * m['lora_text_share']:.0f}% of a "
        f"{1e3 * m['lora_step_s']:.1f} ms step",
        f"  -> tokens through the adapted towers per step: text {m['lora_text_tokens']} (all classes), image "
        f"{m['lora_image_tokens']} (the batch)",
    ]

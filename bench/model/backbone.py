"""Frozen open_clip backbones: a small factory and the encoders (the text encoder on prompt embeddings included).

    bb = create_backbone("ViT-B-16", "openai", device="cuda")   # builds ViT-B-16-quickgelu (OpenAI weights)
    feats = bb.encode_image(images)                              # (n, embed_dim) float32, not normalised
    tokens = bb.tokenize(["X X X X a photo of a dog."])
    f = bb.encode_prompts(bb.token_embedding(tokens), tokens)    # differentiable w.r.t. the prompt embeddings

Project architectures (`tiny-test`, `mini`) live as JSON in bench/model_configs/ and are registered on import, as
are the users' own open_clip model-config folders in $BENCH_MODEL_CONFIGS (``--model-configs DIR``).
``hf-hub:org/repo`` names a model whose open_clip config and weights live on the Hugging Face Hub.
Checkpoint files are read by :mod:`bench.model.weights`, the image transforms built by :mod:`bench.model.transforms`
(their public names stay importable from here).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from bench import log
from bench.errors import BenchError
from bench.model.transforms import eval_transform, eval_transform_from_cfg, train_transform  # noqa: F401 - re-exported
from bench.model.weights import (_check_file, _looks_like_path, _one_line,  # noqa: F401 - re-exported
                                 checkpoint_digest, load_weights, read_checkpoint, read_torchscript_weights)

RANDOM_INIT_MESSAGE = "Model initialized randomly"  # open_clip's log line for create_model(pretrained=None)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)
MODEL_CONFIGS_ENV = "BENCH_MODEL_CONFIGS"
HF_HUB = "hf-hub:"
_USER_CONFIG_DIRS: set[str] = set()


def add_model_configs(folder) -> list[str]:
    """Register a folder of open_clip model-config JSONs (``<name>.json``, open_clip's format); returns the names.
    Recorded in $BENCH_MODEL_CONFIGS, so child processes (SLURM tasks) see them too."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise BenchError(f"model-config folder not found: {path}")
    names = sorted(p.stem for p in path.glob("*.json"))
    if not names:
        raise BenchError(f"no model configs (*.json) in {path}")
    if str(path) not in _USER_CONFIG_DIRS:
        try:
            open_clip.add_model_config(path)
        except (ValueError, KeyError, TypeError, OSError, AttributeError) as e:
            raise BenchError(f"bad model config in {path}: {_one_line(e)} (open_clip's format: embed_dim, "
                             f"vision_cfg, text_cfg)") from None
        _USER_CONFIG_DIRS.add(str(path))
    bad = [n for n in names if n not in open_clip.list_models()]
    if bad:
        raise BenchError(f"{path / (bad[0] + '.json')} is not an open_clip model config (needs embed_dim, "
                         f"vision_cfg and text_cfg)")
    dirs = [d for d in os.environ.get(MODEL_CONFIGS_ENV, "").split(os.pathsep) if d]
    if str(path) not in dirs:
        os.environ[MODEL_CONFIGS_ENV] = os.pathsep.join([*dirs, str(path)])
    return names


def is_hf_hub(arch: str | None) -> bool:
    return bool(arch) and arch.startswith(HF_HUB)


def check_arch(arch: str) -> None:
    """One line if ``arch`` is neither an open_clip architecture (built-in or registered) nor ``hf-hub:org/repo``."""
    if is_hf_hub(arch):
        if "/" not in arch[len(HF_HUB):]:
            raise BenchError(f"bad backbone '{arch}': expected hf-hub:<org>/<repo>")
        return
    if arch not in open_clip.list_models():
        raise BenchError(f"unknown backbone '{arch}': not an open_clip architecture (see `bench list backbones`; "
                         f"your own configs: --model-configs DIR; Hugging Face models: hf-hub:<org>/<repo>)")

PRECISIONS = ("auto", "fp32", "amp", "bf16", "fp16")


# ---------------------------------------------------------------------------------------------------------------
# Factory

def resolve_arch(arch: str, pretrained: str | None, quick_gelu: bool | None = None) -> tuple[str, bool]:
    """The architecture to build for these weights -> (open_clip model name, force_quick_gelu).

    Weights trained with QuickGELU (OpenAI's, and tags whose open_clip pretrained cfg says `quick_gelu`) must run
    in a QuickGELU model: open_clip >= 2.29 builds ('ViT-B-16', 'openai') with GELU and only warns. We prefer the
    registered '-quickgelu' twin (so the recorded name says what ran), else force QuickGELU on `arch`.
    `quick_gelu`: whether the weights need QuickGELU; None decides from the tag `pretrained`.
    """
    if is_hf_hub(arch):  # the hub's config says what the weights need
        return arch, False
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    if quick_gelu is None:
        quick_gelu = pretrained == "openai" or bool(tag_cfg.get("quick_gelu"))
    model_cfg = open_clip.get_model_config(arch) or {}
    if not quick_gelu or model_cfg.get("quick_gelu"):
        return arch, False
    twin = arch + "-quickgelu"
    if twin in open_clip.list_models() and (not tag_cfg or open_clip.get_pretrained_cfg(twin, pretrained)):
        return twin, False
    return arch, True


def create_backbone(arch: str, pretrained: str | None, device: str = "cpu", precision: str = "auto") -> "Backbone":
    """A frozen open_clip model in eval mode.

    pretrained: an open_clip tag ("openai", "laion2b_s34b_b88k", ...), a checkpoint file (.pt/.bin/.safetensors,
    an OpenAI TorchScript archive included), "mini" (the miniature world's checkpoint) or None (random init).
    precision: "auto" (fp32 on CPU; fp16 autocast on CUDA, as the reference numbers were produced in fp16), "fp32",
    "amp" (fp16 autocast), "bf16" (bf16 autocast; on CUDA only where the GPU has native bf16) or "fp16" (weights
    in fp16 as OpenAI's CLIP). Weights stay fp32 except for "fp16"; outputs are always float32.
    """
    check_arch(arch)
    device = _resolve_device(device)
    precision = _resolve_precision(precision, device)
    if is_hf_hub(arch):
        return _create_hf_hub(arch, pretrained, device, precision)

    source = pretrained
    if pretrained == "mini":
        from bench.mini.pretrain import ensure_checkpoint  # the mini world's; pretrains once if missing
        source = str(ensure_checkpoint())

    tag, checkpoint, state_dict, quick_gelu = None, None, None, None
    if source is not None:
        if open_clip.get_pretrained_cfg(arch, source):
            tag = source
        elif _looks_like_path(source):
            checkpoint = _check_file(source)
            state_dict, quick_gelu = read_checkpoint(checkpoint)
        else:
            known = open_clip.list_pretrained_tags_by_model(arch)
            raise BenchError(f"unknown pretrained tag '{source}' for {arch} (known tags: {', '.join(known) or 'none'}; "
                             f"or pass a checkpoint file path)")

    name, force_quick_gelu = resolve_arch(arch, tag, quick_gelu)
    if quick_gelu:
        log.info(f"{checkpoint} holds OpenAI CLIP weights: building {name} with QuickGELU")
    with torch.random.fork_rng(devices=[]):  # random init (tests) is the same model in every process
        torch.manual_seed(0)
        # open_clip says "Model initialized randomly" when created without a tag: false when we load a checkpoint
        quiet = log.drop_log_messages(RANDOM_INIT_MESSAGE) if state_dict is not None else contextlib.nullcontext()
        with quiet:
            model = _create_model(name, tag, device, precision, force_quick_gelu)
    if state_dict is not None:
        load_weights(model, state_dict, checkpoint, name)

    arch_id = name + ("+quickgelu" if force_quick_gelu else "")
    if tag is not None:
        identity = f"{arch_id}@{tag}"
    elif checkpoint is not None:
        identity = f"{arch_id}@sha256:{checkpoint_digest(checkpoint)[:16]}"
    else:  # random weights differ per creation: key caches on their content
        h = hashlib.sha256()
        for t in model.state_dict().values():
            h.update(t.detach().float().cpu().numpy().tobytes())
        identity = f"{arch_id}@random-{h.hexdigest()[:16]}"
    return Backbone(model, arch=name, pretrained=pretrained, identity=identity, device=device, precision=precision,
                    force_quick_gelu=force_quick_gelu)


def _create_hf_hub(arch: str, pretrained: str | None, device, precision: str) -> "Backbone":
    """An ``hf-hub:org/repo`` model: config, preprocessing and weights from the Hub (or its local cache)."""
    if pretrained not in (None, "hf-hub"):
        raise BenchError(f"{arch} brings its own weights from the Hugging Face Hub: leave out --pretrained")
    try:
        model = open_clip.create_model(arch, precision="fp16" if precision == "fp16" else "fp32", device=device,
                                       pretrained_text=False, require_pretrained=True)
    except (RuntimeError, OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = ("offline (HF_HUB_OFFLINE) and not in the Hugging Face cache: fetch it once with internet, or point "
                "HF_HOME at a warm cache" if offline else "check the name, the network, or HF_HOME's cache")
        raise BenchError(f"could not load {arch} from the Hugging Face Hub: {hint} "
                         f"({_one_line(e, 160)})") from None
    identity = arch
    try:  # the snapshot's commit identifies the weights that were actually used
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(arch[len(HF_HUB):], "open_clip_config.json")
        if isinstance(cached, str):
            identity = f"{arch}@{Path(cached).parent.name[:12]}"
    except ImportError:
        pass
    return Backbone(model, arch=arch, pretrained="hf-hub", identity=identity, device=device, precision=precision)


def _create_model(name, tag, device, precision, force_quick_gelu):
    try:
        return open_clip.create_model(
            name, pretrained=tag, precision="fp16" if precision == "fp16" else "fp32", device=device,
            force_quick_gelu=force_quick_gelu, pretrained_text=False, require_pretrained=tag is not None)
    except RuntimeError as e:
        if tag is None or "download" not in str(e).lower():
            raise
        raise BenchError(f"could not download the weights for {name} '{tag}' ({_one_line(e)}); pass a local "
                         f"checkpoint path, or set HF_HUB_OFFLINE=1 with a warm Hugging Face cache") from e


def _resolve_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BenchError(f"unknown device {device!r} ({_one_line(e)}); e.g. --device cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device '{device}' requested but CUDA is not available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BenchError(f"device '{device}' requested but only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BenchError(f"device '{device}' requested but MPS is not available here (use --device cpu)")
    return device


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise BenchError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    if precision == "bf16" and device.type == "cuda" and not bf16_supported(device):
        raise BenchError(f"precision bf16 requested but {torch.cuda.get_device_name(device)} has no native bf16 "
                         f"(only emulated, slow): use --precision amp (fp16 autocast, the default on GPU)")
    if precision != "auto":
        return precision
    # fp16 autocast on GPU: the reference numbers (CoOp, CoCoOp, KgCoOp) were produced with CLIP in fp16
    return "amp" if device.type == "cuda" else "fp32"


def bf16_supported(device) -> bool:
    """Native bf16 on this CUDA device (compute capability >= 8.0), not emulation; asks the given device, not the
    current one."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch without the argument
            return torch.cuda.get_device_capability(device)[0] >= 8


# ---------------------------------------------------------------------------------------------------------------
# The backbone

def pool_text(model, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The text tower's head: the EOT token of each sequence (LayerNorm is per token, so pooling first is exact),
    ``ln_final`` and the projection (a Parameter or an ``nn.Linear``, depending on the open_clip model)."""
    x = model.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


class Backbone:
    """A frozen open_clip model with the encoders the methods need (see create_backbone)."""

    def __init__(self, model, arch: str, pretrained: str | None, identity: str, device: str | torch.device,
                 precision: str, force_quick_gelu: bool = False):
        model.requires_grad_(False)
        model.eval()
        self.model = model
        self.arch = arch
        self.pretrained = pretrained
        self.identity = identity
        self.device: str = str(device)  # "cpu", "cuda", "cuda:1"
        self.precision = precision  # resolved: fp32 | amp | bf16 | fp16
        self.force_quick_gelu = force_quick_gelu

        cfg = open_clip.get_model_config(arch)
        self.embed_dim: int = cfg["embed_dim"]
        pp = model.visual.preprocess_cfg  # open_clip's: the architecture's, updated by the pretrained tag's / hub's
        self.preprocess_cfg: dict = dict(pp)
        size = pp["size"]
        self.image_size: int = size if isinstance(size, int) else int(size[0])
        self.mean, self.std = tuple(pp["mean"]), tuple(pp["std"])
        text = getattr(model, "text", model)
        self.context_length: int = text.context_length
        token_embedding = getattr(model, "token_embedding", None)
        self.ctx_dim: int | None = token_embedding.embedding_dim if token_embedding is not None else None
        self.logit_scale: float = float(model.logit_scale.detach().exp().item())
        self.eval_transform = eval_transform_from_cfg(pp)
        self.train_transform = train_transform(self.image_size, self.mean, self.std)
        self._tokenizer = None

    def train_transform_for(self, augmentation: dict | None = None):
        """The training augmentation a method declares (:meth:`bench.method.Method.train_augmentation`): None is
        CoOp's (:attr:`train_transform`); ``{"crop_scale": (lo, hi)}`` another RandomResizedCrop scale range."""
        if not augmentation:
            return self.train_transform
        return train_transform(self.image_size, self.mean, self.std, crop_scale=augmentation["crop_scale"])

    def __repr__(self) -> str:
        return f"Backbone({self.identity}, device={self.device}, precision={self.precision})"

    # --- text side -----------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # lazy: HF tokenizers may need the hub, image-only use must not
            self._tokenizer = open_clip.get_tokenizer(self.arch, context_length=self.context_length)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(n, context_length) token ids on the CPU: SOT, BPE ids, EOT (the largest id), zero padding."""
        return self.tokenizer(list(texts)).long()

    def name_token_ids(self, text: str) -> list[int]:
        """The BPE ids of `text` without SOT/EOT, exactly as tokenize() places them."""
        tokens = self.tokenize([text])[0]
        return tokens[1:int(tokens.argmax())].tolist()

    def _check_prompt_support(self) -> None:
        m = self.model
        if getattr(m, "token_embedding", None) is None:
            raise BenchError(f"{self.arch} has a Hugging Face or custom text tower (no token embedding): prompt "
                             f"methods need a CLIP-style text transformer; use it for zero-shot or linear probe only")
        if getattr(m, "attn_mask", None) is None or getattr(m, "text_pool_type", "argmax") != "argmax":
            raise BenchError(f"{self.arch} has no causal text mask with end-of-text pooling: prompt methods "
                             f"are not supported on it")

    def token_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, L) ids -> (n, L, ctx_dim) float32 word embeddings, no grad."""
        self._check_prompt_support()
        with torch.no_grad():
            return self.model.token_embedding(tokens.to(self.device)).float()

    def encode_prompts(self, prompt_embeds: torch.Tensor, tokens: torch.Tensor, cut: bool = True) -> torch.Tensor:
        """Text features (n, embed_dim) float32, not normalised, from word embeddings (n, L, ctx_dim).

        `tokens` (n, L) only locates the end-of-text token (argmax per row). Differentiable w.r.t.
        `prompt_embeds`. cut=True runs only the first max(eot)+1 positions: exact, since attention is causal.
        """
        self._check_prompt_support()
        m = self.model
        if prompt_embeds.shape[:2] != tokens.shape or prompt_embeds.shape[1] > m.positional_embedding.shape[0]:
            raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} does not match tokens "
                             f"{tuple(tokens.shape)} (context length {m.positional_embedding.shape[0]})")
        tokens = tokens.to(self.device)
        prompt_embeds = prompt_embeds.to(self.device)
        eot = tokens.argmax(dim=-1)
        if cut:
            n_pos = int(eot.max()) + 1
            prompt_embeds = prompt_embeds[:, :n_pos]
        n_pos = prompt_embeds.shape[1]
        cast_dtype = m.transformer.get_cast_dtype()
        with self._autocast():
            x = prompt_embeds.to(cast_dtype) + m.positional_embedding[:n_pos].to(cast_dtype)
            x = m.transformer(x, attn_mask=m.attn_mask[:n_pos, :n_pos])  # batch-first; the mask is not in the blocks
            x = pool_text(m, x, eot)
        return x.float()

    def encode_text(self, texts: list[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """(n, embed_dim) float32 text features on self.device, no grad, in batches."""
        texts = list(texts)
        feats = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenize(texts[i:i + batch_size])
                if getattr(self.model, "token_embedding", None) is None:  # HF text tower: its own encode_text
                    with self._autocast():
                        f = self.model.encode_text(tokens.to(self.device)).float()
                else:
                    f = self.encode_prompts(self.token_embedding(tokens), tokens, cut=True)
                feats.append(F.normalize(f, dim=-1) if normalize else f)
        if not feats:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.cat(feats)

    # --- image side ----------------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised pixels -> (n, embed_dim) float32 features, not normalised, no grad."""
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        with torch.no_grad(), self._autocast():
            return self.model.encode_image(images.to(self.device, dtype, non_blocking=True)).float()

    def _autocast(self):
        dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype)


# Users' model-config folders, also in child processes (SLURM tasks) through the environment
for _folder in [d for d in os.environ.get(MODEL_CONFIGS_ENV, "").split(os.pathsep) if d]:
    add_model_configs(_folder)

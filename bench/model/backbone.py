"""Frozen open_clip backbones: a small factory, the image transforms, and the text encoder on prompt embeddings.

    bb = create_backbone("ViT-B-16", "openai", device="cuda")   # builds ViT-B-16-quickgelu (OpenAI weights)
    feats = bb.encode_image(images)                              # (n, embed_dim) float32, not normalised
    tokens = bb.tokenize(["X X X X a photo of a dog."])
    f = bb.encode_prompts(bb.token_embedding(tokens), tokens)    # differentiable w.r.t. the prompt embeddings

Project architectures (`tiny-test`, `mini`) live as JSON in bench/model_configs/ and are registered on import, as
are the users' own open_clip model-config folders in $BENCH_MODEL_CONFIGS (``--model-configs DIR``).
``hf-hub:org/repo`` names a model whose open_clip config and weights live on the Hugging Face Hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import convert_to_custom_text_state_dict
from torchvision import transforms as T

from bench import log
from bench.errors import BenchError

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
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Attributes OpenAI's TorchScript CLIP archives carry in their state dict (not parameters).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (abs path, size, mtime_ns) -> sha256 hex, per process


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
# Checkpoint files

def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(CHECKPOINT_SUFFIXES) or os.path.exists(value)


def _check_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise BenchError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise BenchError(f"checkpoint {path} is not a file")
    if not os.access(path, os.R_OK):
        raise BenchError(f"checkpoint {path} is not readable (permission denied)")
    return path


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_DECLARATION = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]\n  __buffers__ = \[([^\]]*)\]",
                          re.M)


# TorchScript's typed containers in data.pkl: plain values here (nothing is executed)
_JIT_BUILDERS = {**{f"build_{k}list": (lambda data: data) for k in ("int", "double", "bool", "tensor", "complex")},
                 "restore_type_tag": lambda value, type_str: value}


class _ScriptObject:
    """Stands in for a TorchScript class instance of the archive: only its pickled attributes are kept."""

    qualname = ""
    state = None

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def read_torchscript_weights(path: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (``torch.jit.save``; OpenAI's CLIP releases), read
    WITHOUT executing anything from it: no ``torch.jit.load`` (which runs the archive's compiled code, e.g. a
    ``__setstate__``), and ``data.pkl`` goes through an unpickler that only knows the archive's own classes (as
    inert records), tensor rebuilding and ``OrderedDict``. Tensors come from the zip's ``data/<key>`` records;
    which attributes are parameters or buffers comes from the ``__parameters__``/``__buffers__`` declarations in
    the archive's ``code/`` files (they are read as text, never run)."""
    import io
    import pickle

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError("not a TorchScript archive (no <name>/data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        declared: dict[str, tuple[set, set]] = {}
        for n in names:
            if n.startswith(prefix + "code/") and n.endswith(".py"):
                module = n[len(prefix + "code/"): -len(".py")].replace("/", ".")
                for cls, params, bufs in _DECLARATION.findall(z.read(n).decode("utf-8", "replace")):
                    declared[f"{module}.{cls}"] = (set(re.findall(r'"([^"]+)"', params)),
                                                   set(re.findall(r'"([^"]+)"', bufs)))
        storages: dict[str, torch.Tensor] = {}

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "__torch__" or module.startswith("__torch__."):
                    return type(name, (_ScriptObject,), {"qualname": f"{module}.{name}"})
                if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
                    return _rebuild_tensor
                if module == "torch.jit._pickle" and name in _JIT_BUILDERS:
                    return _JIT_BUILDERS[name]
                if module == "collections" and name == "OrderedDict":
                    return OrderedDict
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _STORAGE_DTYPES[name]
                raise pickle.UnpicklingError(f"refusing {module}.{name} in {path.name} (only weights are read)")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                        and isinstance(pid[1], torch.dtype)):
                    raise pickle.UnpicklingError(f"unexpected record {pid!r:.60} in {path.name}")
                dtype, key = pid[1], str(pid[2])
                if key not in storages:
                    record = prefix + "data/" + key
                    if record not in names or "/" in key or ".." in key:
                        raise pickle.UnpicklingError(f"missing tensor record {record} in {path.name}")
                    storages[key] = torch.frombuffer(bytearray(z.read(record)), dtype=dtype) if z.getinfo(record).file_size \
                        else torch.empty(0, dtype=dtype)
                return storages[key]

        root = Restricted(io.BytesIO(z.read(pkl[0]))).load()

    out: dict[str, torch.Tensor] = {}

    def walk(obj, where: str) -> None:
        state = obj.state
        if not isinstance(state, dict):
            return
        if obj.qualname not in declared:
            raise ValueError(f"no declaration of class {obj.qualname} in the archive's code")
        params, bufs = declared[obj.qualname]
        for k, v in state.items():
            if isinstance(v, _ScriptObject):
                walk(v, f"{where}{k}.")
            elif k in params or k in bufs:
                if isinstance(v, torch.Tensor):
                    out[where + k] = v.clone()

    if not isinstance(root, _ScriptObject):
        raise ValueError("the archive's data.pkl holds no module")
    walk(root, "")
    return out


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict in a checkpoint file, and whether it holds OpenAI CLIP weights (which need QuickGELU).

    OpenAI weights = a TorchScript archive (OpenAI's release format), a state dict carrying the archive's
    `input_resolution`/`context_length`/`vocab_size` entries, or one with an fp16 `text_projection` (the layout
    of OpenAI's `convert_weights`).
    """
    path = Path(path)
    openai = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state_dict = load_file(str(path), device="cpu")
        elif _is_torchscript(path):  # OpenAI's release format: read the tensors, never run the archive's code
            state_dict, openai = read_torchscript_weights(path), True
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, not a checkpoint, unsafe pickle, ...
        raise BenchError(f"cannot read checkpoint {path}: {_one_line(e)}") from e
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not state_dict:
        raise BenchError(f"cannot read checkpoint {path}: it holds no state dict")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    openai = openai or any(k in state_dict for k in OPENAI_EXTRA_KEYS)
    proj = state_dict.get("text_projection")
    openai = openai or (isinstance(proj, torch.Tensor) and proj.dtype == torch.float16)
    for key in OPENAI_EXTRA_KEYS:
        state_dict.pop(key, None)
    return state_dict, openai


def load_weights(model: torch.nn.Module, state_dict: dict, path, arch: str) -> None:
    """Load a checkpoint's state dict strictly (as open_clip.load_checkpoint, without resizing embeddings)."""
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state_dict and target is not None and state_dict[key].ndim != target.ndim:
            state_dict[key] = state_dict[key].reshape(target.shape)
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state_dict and position_ids not in model.state_dict():
        del state_dict[position_ids]
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise BenchError(f"checkpoint {path} does not fit architecture {arch}: {_one_line(e)}") from e


def checkpoint_digest(path) -> str:
    """sha256 of the file content (hex), computed once per process per (path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[key]


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Transforms (docs/protocol.md §5)

def _to_rgb(image):
    return image.convert("RGB")


def eval_transform(image_size: int, mean, std, interpolation=T.InterpolationMode.BICUBIC) -> T.Compose:
    """CLIP's test preprocessing: Resize short side (bicubic) + CenterCrop + ToTensor + Normalize."""
    return T.Compose([
        _to_rgb,
        T.Resize(image_size, interpolation=interpolation),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


_INTERPOLATIONS = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                   "nearest": T.InterpolationMode.NEAREST}


def eval_transform_from_cfg(pp: dict) -> T.Compose:
    """The test preprocessing a model's open_clip preprocess config asks for (interpolation, resize mode, size,
    mean/std), as open_clip's own eval transform builds it. For OpenAI's weights (bicubic, 'shortest') this is
    exactly :func:`eval_transform`: short side resize + center crop."""
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    interpolation = _INTERPOLATIONS.get(pp.get("interpolation", "bicubic"), T.InterpolationMode.BICUBIC)
    mean, std = tuple(pp["mean"]), tuple(pp["std"])
    mode = pp.get("resize_mode", "shortest")
    if mode == "shortest" and h == w:
        return eval_transform(h, mean, std, interpolation)
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

    if mode == "longest":
        steps = [ResizeKeepRatio((h, w), interpolation=interpolation, longest=1),
                 CenterCropOrPad((h, w), fill=pp.get("fill_color", 0))]
    elif mode == "squash":
        steps = [T.Resize((h, w), interpolation=interpolation)]
    elif mode == "shortest":  # non-square: keep the ratio, then crop
        steps = [ResizeKeepRatio((h, w), interpolation=interpolation), T.CenterCrop((h, w))]
    else:
        raise BenchError(f"unknown resize_mode {mode!r} in the model's preprocess config "
                         f"(known: shortest, longest, squash)")
    return T.Compose([_to_rgb, *steps, T.ToTensor(), T.Normalize(mean, std)])


def train_transform(image_size: int, mean, std) -> T.Compose:
    """CoOp's training augmentation: RandomResizedCrop(scale 0.08-1, bicubic) + flip + ToTensor + Normalize."""
    return T.Compose([
        _to_rgb,
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(0.5),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


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

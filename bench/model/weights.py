"""Checkpoint files: reading a state dict (safetensors, torch.save, OpenAI's TorchScript archives without running
their code), loading it into an open_clip model, and the file's content digest (part of a backbone's identity)."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from open_clip.model import convert_to_custom_text_state_dict

from bench.errors import BenchError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Attributes OpenAI's TorchScript CLIP archives carry in their state dict (not parameters).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (abs path, size, mtime_ns) -> sha256 hex, per process



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

"""What a cached feature is keyed by: digests, the explicit description of a transform, the numerics of a
backbone, and the seed of each augmented view (see :mod:`bench.features`)."""

from __future__ import annotations

import hashlib
import json

import torch

from bench.data.images import usable_cpus

FORMAT = 2                 # bumped whenever what a key means changes


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


# ---------------------------------------------------------------------------------------------------------------
# Augmentation seeding of cached views (the image stream of image-side methods seeds its crops per epoch
# instead, bench.engine.imagestream.augmentation_seed: its crops are not these)

def view_seed(run_seed: int | None, image_key: str, view: int) -> int:
    """Seed of augmented view ``view`` of image ``image_key`` (path relative to its dataset root) in a run
    with seed ``run_seed``: the same in every process and platform."""
    return int(_digest(f"{int(run_seed or 0)}|{image_key}|{int(view)}", 15), 16)


def augment(image, transform, run_seed: int | None, image_key: str, view: int) -> torch.Tensor:
    """``transform(image)`` drawn with torch's RNG seeded by :func:`view_seed`; the caller's RNG state is kept.

    With ``transform = backbone.train_transform`` this is exactly the pixels the feature cache encodes for that
    (run seed, image, view). (The image stream seeds its crops per epoch instead.)"""
    gen = torch.default_generator  # what torchvision's random transforms draw from (on the CPU)
    state = gen.get_state()
    gen.manual_seed(view_seed(run_seed, image_key, view))
    try:
        return transform(image)
    finally:
        gen.set_state(state)


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "value") and hasattr(type(value), "__members__"):  # enums (InterpolationMode)
        return f"{type(value).__name__}.{value.name}"
    return describe_transform(value)


def describe_transform(tf) -> object:
    """A JSON-able description of a (torchvision) transform that is the same in every process.

    Compose -> list of steps; a function -> its module and qualified name; any other object -> its class name and
    public attributes (size, scale, ratio, interpolation, p, mean, std, antialias, ...)."""
    import torchvision.transforms as T

    if isinstance(tf, T.Compose):
        return [describe_transform(t) for t in tf.transforms]
    if _is_function(tf):  # by name, and by its code (a lambda or an edited function gets another key)
        code = getattr(tf, "__code__", None)
        body = _code_digest(code) if code is not None else ""
        return f"{getattr(tf, '__module__', '')}.{tf.__qualname__}:{body}"
    attrs = {k: _plain(v) for k, v in sorted(getattr(tf, "__dict__", {}).items())
             if not k.startswith("_") and k != "training"}
    return {"type": f"{type(tf).__module__}.{type(tf).__qualname__}", **attrs}


def _code_digest(code) -> str:
    """Digest of a function's bytecode and constants (nested code objects by their own digest, not their repr,
    which holds an address)."""
    consts = [_code_digest(c) if hasattr(c, "co_code") else repr(c) for c in code.co_consts]
    return _digest(repr((code.co_code, consts, code.co_names)), 8)


def _is_function(obj) -> bool:
    import types

    return isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))


def transform_key(name: str, transform, image_size: int) -> str:
    """Folder name of a transform: ``<name>-<size>px-<digest of its description + library versions>``."""
    import PIL
    import torchvision

    text = json.dumps([FORMAT, describe_transform(transform), torchvision.__version__, PIL.__version__],
                      sort_keys=True)
    return f"{name}-{image_size}px-{_digest(text, 12)}"


def numerics_key(backbone) -> str:
    """``<precision>-<device type>-torch<version>``; CUDA devices are told apart by model name."""
    device = torch.device(backbone.device)
    kind = device.type
    if kind == "cuda":
        name = torch.cuda.get_device_name(device)
        kind += "-" + "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return f"{backbone.precision}-{kind}-torch{torch.__version__.split('+')[0]}"


def default_workers(device: str = "cpu") -> int:
    """DataLoader workers for decoding, from the CPUs this process may run on (its affinity, e.g. a SLURM
    allocation, not the whole node): all of them (at most 8) when a GPU encodes, all but one when the CPU
    encodes (that one runs the encoder, overlapped); 0 (decode in the main process) with a single CPU."""
    n = usable_cpus()
    if n <= 1:
        return 0
    return min(8, n if torch.device(device).type == "cuda" else n - 1)

"""The image transforms (docs/protocol.md §5): CLIP's test preprocessing (or the one a model's open_clip preprocess
config asks for) and CoOp's training augmentation."""

from __future__ import annotations

from torchvision import transforms as T

from bench.errors import BenchError



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


def train_transform(image_size: int, mean, std, crop_scale: tuple[float, float] = (0.08, 1.0)) -> T.Compose:
    """CoOp's training augmentation: RandomResizedCrop(scale 0.08-1, bicubic) + flip + ToTensor + Normalize
    (``crop_scale``: another RandomResizedCrop scale range, e.g. Tip-Adapter's (0.5, 1))."""
    return T.Compose([
        _to_rgb,
        T.RandomResizedCrop(image_size, scale=tuple(float(v) for v in crop_scale),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(0.5),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])

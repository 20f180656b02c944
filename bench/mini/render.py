"""Procedural images and captions for the miniature world (vectorised over a batch, seeded, deterministic).

An image is one shape on a background, described by integer attributes (indices into the vocabularies
below) plus continuous geometry (centre, radius, rotation) and pattern phase. ``sample_attributes`` draws
them, ``render`` turns a batch of them into uint8 RGB arrays (N, S, S, 3) with NumPy array operations
only (2x supersampling for anti-aliased edges; one vectorised pass per shape / pattern / background
kind, never a Python loop over images), and ``captions`` writes the pretraining captions.

Caption design (this is what makes the world's phenomena real, see README "What you are looking at"):
- the shape word is preceded by a colour word ("a photo of a small red circle on a dark background.") or
  stands in a short form ("a circle shape."); the dataset prompt "a photo of a circle." is never a caption;
- colour alone appears in partial captions ("a photo of a red object."): colour prompts are easy;
- pattern words (striped, dotted, ...) appear in a minority of captions of patterned shapes and in the
  captions of "swatches" (a pattern filling the frame, 40 % of the images, at a random scale); the
  specialists' words for the same patterns (SPECIALIST: banded, tartan, ...) in only P_SPECIALIST of them:
  a "specialised" vocabulary (MiniTextures), weak in zero-shot, learnable from a few shots;
- ``focus_captions`` gives every image a second, single-attribute caption ("a star shape.", "a dotted
  pattern."), which pretraining also contrasts against: shape is learned in minutes instead of hours.
Change anything here that alters images or captions -> bump ``VERSION`` (it is part of the cache keys).
"""

from __future__ import annotations

import numpy as np

VERSION = "4"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 35),
    "green": (45, 165, 60),
    "cyan": (35, 200, 205),
    "blue": (40, 75, 215),
    "purple": (135, 55, 195),
    "pink": (240, 115, 175),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart", "ring", "crescent"]
SIZES = ["small", "medium", "large"]
SIZE_RADIUS = {"small": (6.0, 7.5), "medium": (8.0, 10.0), "large": (10.5, 12.5)}  # in pixels at 32 px
PATTERNS = ["solid", "striped", "checkered", "dotted", "grid", "zigzag", "diagonal", "crosshatched", "speckled"]
# the specialists' word for each pattern (DTD-like): in a few captions only, so a dataset named with them is
# a "specialised" one whose class names the pretraining rarely saw (one BPE token each, none a common word)
SPECIALIST = {"striped": "banded", "checkered": "tartan", "dotted": "polka", "grid": "woven", "zigzag": "chevron",
              "diagonal": "twill", "crosshatched": "hatched", "speckled": "studded"}
P_SPECIALIST = 0.003  # share of the captions naming a pattern that use the specialist's word
# pretraining backgrounds first; "patchwork" and "gradient" are never seen in pretraining (domain shift)
BACKGROUNDS = ["dark", "light", "gray", "noisy", "patchwork", "gradient"]
PRETRAIN_BACKGROUNDS = ["dark", "light", "gray", "noisy"]
STYLES = ["filled", "outline", "swatch"]  # swatch: the pattern fills the whole frame (no shape)
# patterns are drawn at a random scale (log-uniform in this range; 1 = periods of 4-5 px at 32 px), so the
# pretrained image tower knows a pattern at any zoom, as a real CLIP does: CoOp's training augmentation
# (random resized crops down to 8 % of the area) zooms in up to 3.5x
PATTERN_SCALE = (1.0, 3.0)

COLOR_NAMES = list(COLORS)
_COLOR_RGB = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)

# attribute name -> vocabulary
VOCAB = {
    "color": COLOR_NAMES,
    "shape": SHAPES,
    "size": SIZES,
    "pattern": PATTERNS,
    "background": BACKGROUNDS,
    "style": STYLES,
}

# the pretraining distribution (weights per vocabulary entry; missing entries have weight 0)
PRETRAIN_DIST: dict[str, dict[str, float]] = {
    "pattern": {"solid": 0.5, **{p: 0.5 / 8 for p in PATTERNS[1:]}},
    "background": {"dark": 0.3, "light": 0.3, "gray": 0.3, "noisy": 0.1},
    "style": {"filled": 0.5, "outline": 0.1, "swatch": 0.4},
}


def _weights(attr: str, spec) -> np.ndarray:
    """Normalised probability vector over VOCAB[attr] from None (uniform), a list of names or a dict."""
    vocab = VOCAB[attr]
    if spec is None:
        w = np.ones(len(vocab))
    elif isinstance(spec, dict):
        unknown = set(spec) - set(vocab)
        if unknown:
            raise ValueError(f"unknown {attr} values {sorted(unknown)}; known: {vocab}")
        w = np.array([float(spec.get(v, 0.0)) for v in vocab])
    else:
        unknown = set(spec) - set(vocab)
        if unknown:
            raise ValueError(f"unknown {attr} values {sorted(unknown)}; known: {vocab}")
        w = np.array([1.0 if v in spec else 0.0 for v in vocab])
    return w / w.sum()


def sample_attributes(rng: np.random.Generator, n: int, image_size: int = 32, max_offset: float = 1.0,
                      **dist) -> dict[str, np.ndarray]:
    """Draw n images' attributes. ``dist[attr]`` restricts/weights an attribute (list of names or
    {name: weight}); unspecified attributes use PRETRAIN_DIST (or uniform). Fixed attributes can also be
    given as a full int array of length n (e.g. ``color=np.array([...])``). ``dist["pattern_scale"]``:
    (lo, hi) range of the pattern scale (default PATTERN_SCALE)."""
    dist = dict(dist)
    scale_lo, scale_hi = dist.pop("pattern_scale", PATTERN_SCALE)
    out: dict[str, np.ndarray] = {}
    for attr in ("color", "shape", "size", "pattern", "background", "style"):
        spec = dist.get(attr, PRETRAIN_DIST.get(attr))
        if isinstance(spec, np.ndarray):
            out[attr] = spec.astype(np.int64)
            continue
        out[attr] = rng.choice(len(VOCAB[attr]), size=n, p=_weights(attr, spec)).astype(np.int64)
    if "pattern" not in dist:  # outline drawings carry no fill pattern, swatches always one, unless asked for
        out["pattern"][out["style"] == STYLES.index("outline")] = PATTERNS.index("solid")
        sw = np.nonzero(out["style"] == STYLES.index("swatch"))[0]
        out["pattern"][sw] = rng.integers(1, len(PATTERNS), len(sw))
    lo = np.array([SIZE_RADIUS[s][0] for s in SIZES])[out["size"]]
    hi = np.array([SIZE_RADIUS[s][1] for s in SIZES])[out["size"]]
    scale = image_size / 32.0
    radius = (lo + (hi - lo) * rng.random(n)) * scale
    # the centre moves at most max_offset px (at 32 px) from the image centre, staying inside the frame:
    # a 3-layer ViT from scratch learns position-invariant shape slowly, so objects are roughly centred
    room = np.clip(image_size / 2 - radius - 1.0 * scale, 0.0, max_offset * scale)
    cx = image_size / 2 + room * (2 * rng.random(n) - 1)
    cy = image_size / 2 + room * (2 * rng.random(n) - 1)
    out["radius"] = radius.astype(np.float32)
    out["cx"] = cx.astype(np.float32)
    out["cy"] = cy.astype(np.float32)
    out["angle"] = ((rng.random(n) - 0.5) * np.deg2rad(16)).astype(np.float32)  # +-8 degrees
    out["phase"] = (rng.random((n, 2)) * 8.0).astype(np.float32)
    out["jitter"] = (rng.normal(0.0, 12.0, (n, 3))).astype(np.float32)  # colour jitter in 0..255 units
    out["bg_tint"] = rng.random((n, 2, 3)).astype(np.float32)
    out["pscale"] = np.exp(rng.uniform(np.log(scale_lo), np.log(scale_hi), n)).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------ geometry
def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed (approximate) distance to the shape's border in radius units; u right, v down; <0 inside."""
    r = np.sqrt(u * u + v * v)
    if shape == "circle":
        return r - 0.95
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if shape == "triangle":  # equilateral, pointing up, circumradius 1
        k = np.sqrt(3.0) / 2.0
        vu = -(v - 0.15)
        return np.maximum(k * np.abs(u) + 0.5 * vu, -vu) - 0.5
    if shape == "diamond":
        return (np.abs(u) * 0.8 + np.abs(v)) - 1.0
    if shape == "star":  # five sharp points
        th = np.arctan2(v, u) + np.pi / 2
        f = 0.4 + 0.6 * ((0.5 + 0.5 * np.cos(5 * th)) ** 3)
        return r - f
    if shape == "cross":
        a = np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.95)
        b = np.maximum(np.abs(u) - 0.95, np.abs(v) - 0.3)
        return np.minimum(a, b)
    if shape == "heart":
        c1 = np.sqrt((u + 0.45) ** 2 + (v + 0.3) ** 2) - 0.52
        c2 = np.sqrt((u - 0.45) ** 2 + (v + 0.3) ** 2) - 0.52
        tri = np.maximum((np.abs(u) + v - 0.9) / np.sqrt(2.0), -0.3 - v)
        return np.minimum(np.minimum(c1, c2), tri)
    if shape == "ring":
        return np.abs(r - 0.68) - 0.3
    if shape == "hexagon":
        return np.maximum(np.abs(v), np.abs(u) * 0.866 + np.abs(v) * 0.5) - 0.88
    if shape == "crescent":
        inner = np.sqrt((u - 0.45) ** 2 + (v + 0.1) ** 2) - 0.78
        return np.maximum(r - 0.97, -inner)
    raise ValueError(shape)


def _pattern(pattern: str, x: np.ndarray, y: np.ndarray, phase: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Two-tone pattern mask in {0,1} (1 = the base colour) on pixel coordinates x, y (n, H, W)."""
    px = phase[:, 0, None, None]
    py = phase[:, 1, None, None]
    if pattern == "solid":
        return np.ones_like(x)
    if pattern == "striped":
        return (np.mod(y + py, 4.0) < 2.0).astype(np.float32)
    if pattern == "checkered":
        return (np.mod(np.floor((x + px) / 4.0) + np.floor((y + py) / 4.0), 2.0) < 1.0).astype(np.float32)
    if pattern == "dotted":
        dx = np.mod(x + px, 5.0) - 2.5
        dy = np.mod(y + py, 5.0) - 2.5
        return (dx * dx + dy * dy > 1.6**2).astype(np.float32)
    if pattern == "grid":
        return ~((np.mod(x + px, 5.0) < 1.3) | (np.mod(y + py, 5.0) < 1.3)) * np.float32(1)
    if pattern == "zigzag":  # horizontal bands that zig and zag with slope +-1
        tri = np.abs(np.mod((x + px) / 4.0, 2.0) - 1.0) * 4.0
        return (np.mod(y + py + tri, 5.0) < 2.5).astype(np.float32)
    if pattern == "diagonal":  # stripes at 45 degrees
        return (np.mod(x + y + px, 5.0) < 2.5).astype(np.float32)
    if pattern == "speckled":
        return (noise > 0.45).astype(np.float32)
    if pattern == "crosshatched":
        a = np.mod(x + y + px, 5.0) < 1.3
        b = np.mod(x - y + py + 64.0, 5.0) < 1.3
        return ~(a | b) * np.float32(1)
    raise ValueError(pattern)


def _backgrounds(attrs: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    n = len(attrs["color"])
    bg = np.empty((n, size, size, 3), dtype=np.float32)
    kinds = attrs["background"]
    tint = attrs["bg_tint"]
    for k, name in enumerate(BACKGROUNDS):
        idx = np.nonzero(kinds == k)[0]
        if len(idx) == 0:
            continue
        m = len(idx)
        if name in ("dark", "light", "gray"):
            base = {"dark": 22.0, "light": 228.0, "gray": 125.0}[name]
            t = (tint[idx, 0] - 0.5) * 16.0  # slight per-image colour cast
            noise = rng.normal(0.0, 7.0, (m, size, size, 1)).astype(np.float32)
            bg[idx] = base + t[:, None, None, :] + noise
        elif name == "noisy":
            bg[idx] = 60.0 + 120.0 * rng.random((m, size, size, 3), dtype=np.float32)
        elif name == "patchwork":  # random coloured 4x4 blocks: strong clutter of colours
            cells = 60.0 + 150.0 * rng.random((m, size // 4, size // 4, 3), dtype=np.float32)
            bg[idx] = np.repeat(np.repeat(cells, 4, axis=1), 4, axis=2)[:, :size, :size]
        elif name == "gradient":
            c0 = 255.0 * tint[idx, 0][:, None, None, :]
            c1 = 255.0 * tint[idx, 1][:, None, None, :]
            ramp = (np.arange(size, dtype=np.float32) / (size - 1))[None, None, :, None]
            bg[idx] = c0 * (1 - ramp) + c1 * ramp
    return bg


def render(attrs: dict[str, np.ndarray], rng: np.random.Generator, image_size: int = 32, supersample: int = 2) -> np.ndarray:
    """Render a batch of images: uint8 array (n, size, size, 3). Deterministic given attrs and rng state.

    ``image_size`` is a multiple of 32 and ``attrs`` must be drawn for the same size: a larger image is the
    same scene in finer detail (patterns, outlines and background noise keep their size in 32-px units),
    which is how the downstream datasets are written (128 px, shown to the 32-px model through the eval
    resize, while CoOp's training crops zoom into real detail, as crops of real photos do)."""
    n = len(attrs["color"])
    size = image_size
    if size % 32:
        raise ValueError(f"image_size must be a multiple of 32, not {size}")
    unit = size // 32  # pixels per 32-px unit
    ss = supersample
    S = size * ss
    grid = (np.arange(S, dtype=np.float32) + 0.5) / ss  # pixel coordinates of the sub-samples
    X = np.broadcast_to(grid[None, None, :], (1, S, S))
    Y = np.broadcast_to(grid[None, :, None], (1, S, S))
    speckle = rng.random((n, 32, 32), dtype=np.float32)  # 1-unit cells in pattern coordinates
    bg = _backgrounds(attrs, rng, 32)
    if unit > 1:
        bg = np.repeat(np.repeat(bg, unit, axis=1), unit, axis=2)

    cov = np.zeros((n, S, S), dtype=np.float32)  # coverage (0/1) of the shape at sub-sample level
    for k, shape in enumerate(SHAPES):
        idx = np.nonzero(attrs["shape"] == k)[0]
        if len(idx) == 0:
            continue
        r = attrs["radius"][idx, None, None]
        dx = X - attrs["cx"][idx, None, None]
        dy = Y - attrs["cy"][idx, None, None]
        ca = np.cos(attrs["angle"][idx])[:, None, None]
        sa = np.sin(attrs["angle"][idx])[:, None, None]
        u = (dx * ca + dy * sa) / r
        v = (-dx * sa + dy * ca) / r
        d = _sdf(shape, u, v)
        style = attrs["style"][idx][:, None, None]
        half_width = unit / r  # ~1 unit on each side of the border
        inside = np.where(style == STYLES.index("outline"), np.abs(d) < half_width, d < 0)
        inside = np.where(style == STYLES.index("swatch"), True, inside)
        cov[idx] = inside

    pat = np.ones((n, S, S), dtype=np.float32)
    for k, pattern in enumerate(PATTERNS):
        if pattern == "solid":
            continue
        idx = np.nonzero(attrs["pattern"] == k)[0]
        if len(idx) == 0:
            continue
        ps = attrs["pscale"][idx, None, None] * unit
        xs, ys = X / ps, Y / ps  # pattern coordinates (32-px units), the pattern magnified by its scale
        noise = None
        if pattern == "speckled":
            ix = np.minimum(xs.astype(np.int64), 31)
            iy = np.minimum(ys.astype(np.int64), 31)
            noise = speckle[idx][np.arange(len(idx))[:, None, None], iy, ix]
        pat[idx] = _pattern(pattern, xs, ys, attrs["phase"][idx], noise)

    base = np.clip(_COLOR_RGB[attrs["color"]] + attrs["jitter"], 0, 255)  # (n, 3)
    bg_luma = bg.mean(axis=(1, 2, 3))
    other = np.where(bg_luma < 100, 235.0, 15.0).astype(np.float32)[:, None]
    tone2 = 0.3 * base + 0.7 * other  # the pattern's second tone contrasts with the background

    # box filter of the sub-samples: fill = tone2 + pat * (base - tone2), so the premultiplied colour at
    # output resolution is tone2 * mean(cov) + (base - tone2) * mean(pat * cov)
    def down(a):
        out = a[:, 0::ss, 0::ss].copy()
        for i in range(ss):
            for j in range(ss):
                if i or j:
                    out += a[:, i::ss, j::ss]
        return out / (ss * ss)

    alpha = down(cov)[..., None]
    pat_alpha = down(pat * cov)[..., None]
    img = (tone2[:, None, None, :] * alpha + (base - tone2)[:, None, None, :] * pat_alpha
           + (1.0 - alpha) * bg)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ captions
_SIZE_WORDS = {"small": ["small", "tiny", "small"], "medium": ["", "", "medium"], "large": ["large", "big", "large"]}


def captions(attrs: dict[str, np.ndarray], rng: np.random.Generator, image_size: int = 32,
             p_pattern_word: float = 0.6, p_partial_color: float = 0.1, p_partial_shape: float = 0.25,
             p_partial_pattern: float = 0.3, p_texture_word: float = 0.3) -> list[str]:
    """One caption per image (see the module docstring for the design)."""
    n = len(attrs["color"])
    u = rng.random((n, 8))
    tmpl = rng.integers(0, 1 << 30, n)
    out = []
    for i in range(n):
        color = COLOR_NAMES[attrs["color"][i]]
        shape = SHAPES[attrs["shape"][i]]
        sz = SIZES[attrs["size"][i]]
        pattern = PATTERNS[attrs["pattern"][i]]
        if pattern != "solid" and u[i, 4] < P_SPECIALIST:
            pattern = SPECIALIST[pattern]
        bg = BACKGROUNDS[attrs["background"][i]]
        outline = STYLES[attrs["style"][i]] == "outline"
        size_w = _SIZE_WORDS[sz][tmpl[i] % 3]
        pat_w = pattern if (pattern != "solid" and u[i, 0] < p_pattern_word) else ""
        tex_phrase = ""
        if pat_w and u[i, 1] < p_texture_word:  # "... with a striped texture" instead of the adjective
            tex_phrase, pat_w = f" with a {pattern} texture", ""
        t = tmpl[i] // 3
        if STYLES[attrs["style"][i]] == "swatch":  # a full-frame pattern: no shape, rarely the word "texture"
            forms = [
                f"a {color} {pattern} pattern.",
                f"a close-up of a {pattern} {color} surface.",
                f"a {pattern} {color} fabric.",
                f"a {pattern} pattern.",
                f"a {pattern} texture in {color}.",
            ]
            cap = forms[t % len(forms)]
        elif pattern != "solid" and u[i, 3] < p_partial_pattern:  # pattern only
            forms = [f"a {pattern} pattern.", f"something {pattern} on a {bg} background.", f"a {size_w} {pattern} thing."]
            cap = forms[t % len(forms)]
        elif u[i, 2] < p_partial_shape:  # shape only, never in the form "a photo of a {shape}."
            forms = [
                f"a {shape} shape.",
                f"a {size_w} {pat_w} {shape} shape on a {bg} background.",
                f"the shape of a {shape}{tex_phrase}.",
                f"an outline of a {shape} shape." if outline else f"a {shape} shape{tex_phrase}.",
            ]
            cap = forms[t % len(forms)]
        elif u[i, 2] < p_partial_shape + p_partial_color:  # colour only
            forms = [
                f"a photo of a {color} object.",
                f"a {size_w} {color} object on a {bg} background.",
                f"something {color}.",
                f"a {color} thing{tex_phrase}.",
            ]
            cap = forms[t % len(forms)]
        elif outline:
            forms = [
                f"an outline drawing of a {size_w} {pat_w} {color} {shape}.",
                f"an outline of a {color} {shape} on a {bg} background.",
                f"a drawing of a {color} {shape} in outline{tex_phrase}.",
            ]
            cap = forms[t % len(forms)]
        else:
            forms = [
                f"a photo of a {size_w} {pat_w} {color} {shape} on a {bg} background{tex_phrase}.",
                f"a photo of a {size_w} {pat_w} {color} {shape}{tex_phrase}.",
                f"a {size_w} {pat_w} {color} {shape} on a {bg} background.",
                f"a {pat_w} {color} {shape}{tex_phrase}.",
                f"a {bg} background with a {size_w} {pat_w} {color} {shape}.",
                f"a photo of a {color} {shape}{tex_phrase}.",
            ]
            cap = forms[t % len(forms)]
        out.append(" ".join(cap.split()).replace(" .", "."))
    return out


def focus_captions(attrs: dict[str, np.ndarray], rng: np.random.Generator, p_pattern: float = 0.5) -> list[str]:
    """A second, single-attribute caption per image: "a dotted pattern." for swatches (and for a share
    ``p_pattern`` of patterned shapes), else "a star shape.". Pretraining pairs every image with it as well
    as with its caption: a direct signal for shape, which a from-scratch ViT otherwise learns slowly
    (colour is learned first and dominates), at the cost of one more text pass. The phrasing differs from
    the hand-crafted prompts of the mini datasets."""
    u = rng.random(len(attrs["shape"]))
    out = []
    for i, (k, p, st) in enumerate(zip(attrs["shape"], attrs["pattern"], attrs["style"])):
        if STYLES[st] == "swatch" or (PATTERNS[p] != "solid" and u[i] < p_pattern):
            out.append(f"a {PATTERNS[p]} pattern.")
        else:
            out.append(f"a {SHAPES[k]} shape.")
    return out


def render_batch(n: int, seed: int, image_size: int = 32, **dist) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Convenience: attributes, images and captions of n images from one seed."""
    rng = np.random.default_rng(seed)
    attrs = sample_attributes(rng, n, image_size=image_size, **dist)
    images = render(attrs, rng, image_size=image_size)
    return images, attrs, captions(attrs, rng, image_size=image_size)

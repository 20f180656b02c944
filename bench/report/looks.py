"""How datasets and methods are shown: display names, and each label's colour, marker, line style and order.

A method's look comes from its class (``bench.method.Method``); :func:`distinct_looks` makes the looks of the
labels drawn together distinct (a user method whose hashed marker is CoOp's gets another one).
"""

from __future__ import annotations

from bench.errors import BenchError

ZERO_SHOT_MARKER = "*"  # the zero-shot star of the few-shot figures


def base_method(label: str) -> str:
    """``coop[n_ctx=4]`` -> ``coop``."""
    return label.split("[", 1)[0]


def display_name(key: str) -> str:
    """A dataset key's display name (the key itself when unknown)."""
    try:
        from bench.data import get_spec

        return get_spec(key).display_name or key
    except Exception:  # noqa: BLE001 - unknown keys (hand-made results) are shown as they are
        return key


def method_look(label: str) -> dict:
    """How a label is shown: display_name, color, marker, linestyle, order -- the method class's attributes
    (``bench.method.Method``). A label with overrides (``coop[n_ctx=4]``) keeps its method's order and line
    style and gets its own colour and marker from a hash of the label, the same in every figure."""
    from bench.method import DEFAULT_PALETTE, DISPLAY_ATTRS, _stable_index, default_display

    base, sep, rest = label.partition("[")
    try:
        from bench.registry import get_method

        cls = get_method(base)
        look = {a: getattr(cls, a) for a in DISPLAY_ATTRS}
    except BenchError:  # results of a method that is not registered here
        look = default_display(base)
    if sep:
        look["display_name"] = f"{look['display_name']} [{rest}"
        palette = [c for c in DEFAULT_PALETTE if c.lower() != str(look["color"]).lower()]
        look["color"] = palette[_stable_index(label, len(palette))]
        look["marker"] = default_display(label)["marker"]
    return look


def distinct_looks(labels, seedless=()) -> dict:
    """label -> look (:func:`method_look`) for labels drawn together, with no two sharing a marker or a colour:
    in ``labels``' order, a label whose marker (colour) is already taken gets the first free one of the
    defaults. Zero-shot labels (drawn as a star) keep the star and their colour is reserved first."""
    from bench.method import DEFAULT_MARKERS, DEFAULT_PALETTE

    labels = list(labels)
    looks = {lb: dict(method_look(lb)) for lb in labels}
    used_m = {ZERO_SHOT_MARKER} if seedless else set()
    used_c: set = set()
    order = [lb for lb in labels if lb in seedless] + [lb for lb in labels if lb not in seedless]
    for lb in order:
        look = looks[lb]
        if lb not in seedless:
            if look["marker"] in used_m:
                look["marker"] = next((m for m in DEFAULT_MARKERS if m not in used_m), look["marker"])
            used_m.add(look["marker"])
        color = str(look["color"]).lower()
        if color in used_c:
            look["color"] = next((c for c in DEFAULT_PALETTE if c.lower() not in used_c), look["color"])
        used_c.add(str(look["color"]).lower())
    return looks


def order_labels(labels: list[str], methods: list[str] | None) -> list[str]:
    """Labels in display order: as ``methods`` names them, else by their method's ``order``."""
    if methods:
        out = []
        for m in methods:
            hits = [lb for lb in labels if lb == m] or sorted(lb for lb in labels if base_method(lb) == m)
            out += [h for h in (hits or [m]) if h not in out]
        return out

    def key(label):
        b = base_method(label)
        return (method_look(b)["order"], b, label != b, label)

    return sorted(set(labels), key=key)

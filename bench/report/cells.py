"""The table model: :class:`Cell` (a seed-aggregated value with its marks), :class:`Row`, :class:`Table`, and
:func:`fixed` (rounding once, half up, when a value is shown)."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUS_MARKS = {"RECALLED": "†", "DERIVED": "‡"}
# how a published number chose its hyperparameters (results/reference/README.md, column `selection`): on test
# images, or on the full validation split instead of the suite's few-shot validation; unmarked otherwise
SELECTION_MARKS = {"test": "¶", "full_val": "‖"}
LATEX_MARKS = {"†": "$^\\dagger$", "‡": "$^\\ddagger$", "¶": "$^\\P$", "‖": "$^\\|$"}
FLAG = "§"  # a label whose runs carry a method's table note (e.g. the linear probe's C searched on test images)


def fixed(x: float, digits: int = 2, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals, rounded half up from its shortest decimal form: 60.275 -> "60.28", as a
    paper rounds (plain ``f"{x:.2f}"`` gives "60.27", the binary double lying just below 60.275)."""
    from decimal import ROUND_HALF_UP, Decimal

    d = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{d:+.{digits}f}" if sign else f"{d:.{digits}f}"


@dataclass
class Cell:
    kind: str = "missing"        # value | missing | partial | unsupported | incomplete | paper | diff | empty
    mean: float | None = None
    std: float | None = None
    n: int = 0
    expected: int = 0
    status: str = ""             # paper cells: VERBATIM | RECALLED | DERIVED
    selection: str = ""          # paper cells: "" | test | full_val | unstated (hyperparameters chosen on what)
    best: bool = False
    detail: str = ""             # incomplete averages: "9/11 datasets"

    def text(self, digits: int = 2, latex: bool = False) -> str:
        pm = " $\\pm$ " if latex else " ± "
        dash = "--" if latex else "—"
        if self.kind == "value":
            s = fixed(self.mean, digits)
            if self.std is not None and self.expected > 1:
                s += f"{pm}{fixed(self.std, digits)}"
            return s
        if self.kind == "paper":
            marks = STATUS_MARKS.get(self.status, "") + SELECTION_MARKS.get(self.selection, "")
            if latex:
                marks = "".join(LATEX_MARKS[m] for m in marks)
            return f"{fixed(self.mean, digits)}{marks}"
        if self.kind == "diff":
            return fixed(self.mean, digits, sign=True)
        if self.kind == "partial":
            return f"{self.n}/{self.expected} seeds"
        if self.kind == "unsupported":
            return "n/a"
        if self.kind == "incomplete":
            return f"incomplete ({self.detail})" if self.detail else "incomplete"
        if self.kind == "empty":
            return ""
        return dash


@dataclass
class Row:
    index: list[str]
    cells: list[Cell]
    kind: str = "result"         # result | paper | diff
    group: object = "all"        # best-per-column comparison group; None = joins every group (zero-shot)


@dataclass
class Table:
    title: str
    protocol: str
    index_names: list[str]
    columns: list[str]           # display names
    column_keys: list[str]       # csv names
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def mark_best(self) -> None:
        """Bold the best complete value per column within each comparison group (>= 2 candidates), compared
        as shown (rounded)."""
        results = [r for r in self.rows if r.kind == "result"]
        groups = {r.group for r in results if r.group is not None}
        if not groups:
            groups = {None}
        for j in range(len(self.columns)):
            for g in groups:
                cand = [r.cells[j] for r in results if (r.group == g or r.group is None) and r.cells[j].kind == "value"]
                if len(cand) < 2:
                    continue
                best = max(float(fixed(c.mean)) for c in cand)
                for c in cand:
                    if float(fixed(c.mean)) == best:
                        c.best = True

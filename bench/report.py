"""Figures, how they are checked against their targets, and the table they print as."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Figure:
    """One line of the table: ours against its baseline, measured side by side.

    ``check`` is ``"ratio<="`` / ``"ratio>="`` (ours / baseline against
    ``limit``) or ``"value<"`` (ours alone against ``limit``, in ``unit``).
    """

    key: str
    name: str
    unit: str
    ours: float
    baseline: float | None
    check: str
    limit: float
    #: Per-repeat samples, for the spread shown with --verbose and in BENCHMARKS.md.
    ours_samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    #: Whether a larger number is the better one (throughput) or the smaller (time).
    higher_is_better: bool = False
    info: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def target(self) -> str:
        if self.check == "ratio<=":
            return f"<= {self.limit:g}x"
        if self.check == "ratio>=":
            return f">= {self.limit:g}x"
        return f"< {self.limit:g} {self.unit}"

    @property
    def passed(self) -> bool:
        ratio = self.ratio
        if self.check == "ratio<=":
            return ratio is not None and ratio <= self.limit
        if self.check == "ratio>=":
            return ratio is not None and ratio >= self.limit
        return self.ours < self.limit


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min..max of the repeats, in the figure's unit."""
    if not values:
        return ""
    return f"{_num(min(values))}..{_num(max(values))}"


def _num(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{_num(value)} {unit}"


HEADER = ("figure", "ours", "baseline", "ratio", "target", "result")


def rows(figures: Sequence[Figure]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for f in figures:
        ratio = f.ratio
        out.append(
            (
                f"{f.key}. {f.name}",
                _cell(f.ours, f.unit),
                _cell(f.baseline, f.unit),
                "-" if ratio is None else f"{ratio:.3f}x",
                f.target,
                "PASS" if f.passed else "FAIL",
            )
        )
    return out


def text_table(figures: Sequence[Figure]) -> str:
    table = [HEADER, *rows(figures)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    right = {1, 2, 3}

    def line(r: tuple[str, ...]) -> str:
        cells = enumerate(zip(r, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in cells).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADER), sep, *(line(r) for r in table[1:])])


def markdown_table(figures: Sequence[Figure]) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "| " + " | ".join(["---", "---:", "---:", "---:", "---", "---"]) + " |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(figures)]
    return "\n".join(lines)


def spreads_markdown(figures: Sequence[Figure]) -> str:
    """The per-repeat range behind each median, for readers judging the noise."""
    lines = [
        "| figure | repeats | ours min..max | baseline min..max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for f in figures:
        lines.append(
            f"| {f.key} | {len(f.ours_samples)} | {spread(f.ours_samples)} {f.unit} | "
            + (f"{spread(f.baseline_samples)} {f.unit}" if f.baseline_samples else "-")
            + " |"
        )
    return "\n".join(lines)


def alternate(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each variant once per round, round after round, so drift hits all alike.

    The order inside a round rotates, so no variant always runs first (a warm
    cache, a CPU frequency step) or always last.
    """
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples

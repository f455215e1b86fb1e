"""The runs a report reads, by (data set, op, contender), their medians, and a section's targets."""

from __future__ import annotations

from collections.abc import Callable

from .fmt import median_of
from .measure import Run

Out = Callable[[str], None]
# A section's target: (what, measured value, limit, how it reads); judged value <= limit
Target = tuple[str, float | None, float | None, str]


class Index:
    """The runs of a report by (data set, op, contender), and their medians."""

    def __init__(self, runs: list[Run]) -> None:
        self.by: dict[tuple[str, str, str], list[Run]] = {}
        for r in runs:
            self.by.setdefault((r.dataset, r.op, r.contender), []).append(r)

    def all(self, d: str, op: str, c: str) -> list[Run]:
        return self.by.get((d, op, c), [])

    def ok(self, d: str, op: str, c: str) -> list[Run]:
        return [r for r in self.all(d, op, c) if r.ok]

    def error(self, d: str, op: str, c: str) -> str:
        return next((r.error for r in self.all(d, op, c) if not r.ok), "")

    def med(self, d: str, op: str, c: str, attr: str = "wall") -> float | None:
        rs = self.ok(d, op, c)
        if len(rs) != len(self.all(d, op, c)):
            return None  # a failed or invalid run: no median
        return median_of([getattr(r, attr) if getattr(r, attr) is not None else float("nan") for r in rs])


def verdict_lines(out: Out, targets: list[Target]) -> None:
    """A section's targets, one line each: met or missed."""
    for name, value, limit, shown in targets:
        verdict = "n/a" if value is None or limit is None else ("met" if value <= limit else "missed")
        out(f"- {name}: **{verdict}**: {shown}")
    out("")

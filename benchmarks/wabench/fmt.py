"""Numbers as the report prints them."""

from __future__ import annotations

import statistics


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def mb(n: int) -> str:
    return f"{n / 1e6:.0f}" if n else "-"


def median_of(values: list[float]) -> float | None:
    values = [v for v in values if v == v]  # NaN (a value not measured) is left out
    return statistics.median(values) if values else None


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cell(text: str) -> str:
    """An error message as one table cell."""
    return text[:120].replace("|", "/")

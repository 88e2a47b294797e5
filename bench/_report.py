"""What the benchmark scripts share: formatting a rate, and printing the report table."""

from __future__ import annotations

from collections.abc import Sequence


def rate(x: float) -> str:
    """A rate per second, short: ``5.22M/s``, ``731.4k/s``, ``12/s``."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k/s"
    return f"{x:.0f}/s"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print `rows` under `header` in aligned columns; the last column (PASS / FAIL) is not
    padded, and a rule goes under the header."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for i, line in enumerate(lines):
        cells = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False))
        print(f"{cells}  {line[-1]}")
        if i == 0:
            print("-" * (sum(widths) + 2 * len(widths) + 6))

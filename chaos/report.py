"""The soak's table: one column per backend, checks first (a failing one marked FAIL), then
figures, then what failed, with examples, and the fault log."""

from __future__ import annotations

from chaos.soak import Report

_LABEL = 62
_COLUMN = 22


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<{_LABEL}}" + "".join(f"{c:>{_COLUMN}}" for c in cells)


def table(reports: list[Report]) -> str:
    lines = [_row("", [r.backend for r in reports]), "checks (each must be 0):"]
    names = list(dict.fromkeys(c.name for r in reports for c in r.checks))
    for name in names:
        cells = []
        for report in reports:
            found = [c for c in report.checks if c.name == name]
            count = found[0].count if found else 0
            cells.append(f"FAIL {count}" if count else "0")
        lines.append(_row("  " + name, cells))
    lines.append("figures:")
    labels = _merged([list(r.figures) for r in reports])
    for label in labels:
        lines.append(_row("  " + label, [str(r.figures.get(label, "-")) for r in reports]))
    lines.append(_row("verdict", ["ok" if r.ok else "FAILED" for r in reports]))
    return "\n".join(lines)


def _merged(orders: list[list[str]]) -> list[str]:
    """The labels of every report, each one after the label it follows in its own report (a
    figure only one backend has stays next to its kin)."""
    merged: list[str] = []
    for order in orders:
        previous: str | None = None
        for label in order:
            if label not in merged:
                merged.insert(merged.index(previous) + 1 if previous else len(merged), label)
            previous = label
    return merged


def details(report: Report, *, faults: bool = True) -> str:
    """What failed, with examples; the notes; the fault log; where the logs are."""
    lines = [f"{report.backend} (seed {report.seed}):"]
    for check in report.failures:
        lines.append(f"  FAILED {check.name}: {check.count}")
        lines += [f"      {example}" for example in check.examples]
    lines += [f"  {note}" for note in report.notes
              if faults or not note.startswith("fault at")]
    if report.workdir is not None:
        lines.append(f"  logs: {report.workdir}")
    return "\n".join(lines)

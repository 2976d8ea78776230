"""Percentiles, result tables, pass/miss targets and the JSON written under results/."""

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds of durations given in seconds."""
    return {
        "n": len(values_s),
        "p50_ms": round(pct(values_s, 50) * 1000, 2),
        "p95_ms": round(pct(values_s, 95) * 1000, 2),
        "p99_ms": round(pct(values_s, 99) * 1000, 2),
        "max_ms": round(max(values_s) * 1000, 2) if values_s else math.nan,
    }


@dataclass
class Target:
    """One target row: what was required, what was measured, met or missed."""

    name: str
    measured: float
    limit: float
    #: ``>=`` or ``<=``.
    op: str
    unit: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        """Whether the target is met (NaN never is)."""
        if math.isnan(self.measured):
            return False
        return self.measured >= self.limit if self.op == ">=" else self.measured <= self.limit


@dataclass
class Result:
    """What one scenario measured."""

    scenario: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    wall_s: float = 0.0
    #: 1-minute load average when the scenario started and ended (other work on the box).
    load: list[float] = field(default_factory=lambda: [round(os.getloadavg()[0], 2)])

    def row(self, subject: str, **metrics: Any) -> dict[str, Any]:
        """Add a table row."""
        entry = {"subject": subject, **metrics}
        self.rows.append(entry)
        return entry

    def target(self, name: str, measured: float, op: str, limit: float, **kw: str) -> None:
        """Add a pass/miss row."""
        self.targets.append(Target(name, float(measured), float(limit), op, **kw))

    def zero(self, name: str, count: float) -> None:
        """Add a "must be 0" correctness target."""
        self.target(name, count, "<=", 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able view, targets with their pass/miss."""
        data = asdict(self)
        data["targets"] = [{**asdict(t), "ok": t.ok} for t in self.targets]
        return data


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text (Markdown) table of rows with possibly different keys."""
    if not rows:
        return "(no rows)"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join([line, sep, *body])


def target_rows(targets: list[Target]) -> list[dict[str, Any]]:
    """Targets as table rows."""
    return [
        {
            "target": t.name,
            "measured": f"{_fmt(t.measured)} {t.unit}".strip(),
            "required": f"{t.op} {_fmt(t.limit)} {t.unit}".strip(),
            "result": "pass" if t.ok else "MISS",
            **({"note": t.note} if t.note else {}),
        }
        for t in targets
    ]


def render(result: Result) -> str:
    """The printed report of one scenario."""
    load = " -> ".join(f"{v:g}" for v in result.load)
    title = f"## {result.scenario}  ({result.wall_s:.0f} s, load average {load})"
    parts = [title, "", table(result.rows)]
    if result.targets:
        parts += ["", table(target_rows(result.targets))]
    parts += [f"- {n}" for n in result.notes]
    return "\n".join(parts)


def machine() -> dict[str, Any]:
    """The commit, nproc, memory and CPU model of this machine."""
    model = "unknown"
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with Path("/proc/meminfo").open() as f:
        mem_kb = int(f.readline().split()[1])
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "git": commit,
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def save(results: list[Result], name: str) -> Path:
    """Write ``results`` as JSON under ``bench/results/``; return the file."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{stamp}-{name}.json"
    data = {"machine": machine(), "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(data, indent=2, default=str))
    (RESULTS_DIR / f"latest-{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return path

"""Validate raw data against the config: schema, types, missing values, ranges, categories, duplicates, target.

Bad data is refused with a report naming the column, the rule and example rows. Rows are only ever dropped
for a rule that allows it (exact duplicates), and every dropped row is counted in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

from orchestration.config import DataConfig

MIN_ROWS: Final = 30
MAX_EXAMPLES: Final = 5
MISSING: Final = "missing value (every configured column is required: drop or fill these rows before training)"


@dataclass(frozen=True)
class Finding:
    """One rule broken by one column: how many rows, and the first few (0-based data row, value)."""

    column: str
    rule: str
    count: int
    examples: list[tuple[int, Any]] = field(default_factory=list)

    def line(self) -> str:
        shown = ", ".join(f"row {row}: {value!r}" for row, value in self.examples)
        return f"  {self.column}: {self.rule} ({self.count} rows){' e.g. ' + shown if shown else ''}"


@dataclass
class ValidationReport:
    rows_in: int
    rows_out: int = 0
    errors: list[Finding] = field(default_factory=list)
    dropped: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [
            f"validation: {self.rows_in} rows in, {self.rows_out} rows out "
            "(rows are counted from 0: row 0 is the first data row, line 2 of a CSV file)"
        ]
        if self.errors:
            lines.append(f"refused: {len(self.errors)} rule(s) broken")
            lines += [f.line() for f in self.errors]
        if self.dropped:
            lines.append("dropped:")
            lines += [f.line() for f in self.dropped]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        def rows(findings: list[Finding]) -> list[dict[str, Any]]:
            return [
                {"column": f.column, "rule": f.rule, "count": f.count, "examples": [[r, str(v)] for r, v in f.examples]}
                for f in findings
            ]

        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "errors": rows(self.errors),
            "dropped": rows(self.dropped),
        }


class DataValidationError(ValueError):
    """The data broke at least one rule; ``report`` says which, where and how often."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.format())
        self.report = report


def _finding(column: str, rule: str, mask: pd.Series[bool], values: pd.Series[Any]) -> Finding | None:
    count = int(mask.sum())
    if not count:
        return None
    positions = np.flatnonzero(mask.to_numpy())[:MAX_EXAMPLES]
    examples = [(int(p), values.iloc[p]) for p in positions]
    return Finding(column, rule, count, [(row, v.item() if isinstance(v, np.generic) else v) for row, v in examples])


def validate(frame: pd.DataFrame, config: DataConfig) -> tuple[pd.DataFrame, ValidationReport]:
    """Check ``frame``; return the clean data (typed, duplicates dropped and counted) and the report.

    Raises ``DataValidationError`` if any rule is broken.
    """
    report = ValidationReport(rows_in=len(frame))
    frame = frame.reset_index(drop=True)
    missing = [c for c in (*config.features, config.target) if c not in frame.columns]
    if missing:
        has = f"the file has: {', '.join(map(str, frame.columns))}"
        report.errors += [Finding(c, f"required column is missing ({has})", len(frame)) for c in missing]
        raise DataValidationError(report)

    clean = pd.DataFrame(index=frame.index)
    findings: list[Finding | None] = []
    for name in [*config.numeric, config.target]:
        raw = frame[name]
        numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
        findings.append(_finding(name, MISSING, raw.isna(), raw))
        findings.append(_finding(name, "not a number", raw.notna() & numbers.isna(), raw))
        findings.append(_finding(name, "not finite", numbers.isin([np.inf, -np.inf]), raw))
        if config.declared_dtype(name) == "int":
            fractional = numbers.notna() & (numbers != numbers.round())
            findings.append(_finding(name, "not a whole number (data.dtypes declares it integer)", fractional, raw))
        bound = config.numeric_bound(name)
        if bound is not None:
            low, high = bound
            findings.append(_finding(name, f"outside [{low}, {high}]", (numbers < low) | (numbers > high), raw))
        clean[name] = numbers
    for name in config.categorical:
        raw = frame[name].astype("string")
        findings.append(_finding(name, MISSING, raw.isna(), raw))
        if name in config.categories:
            allowed = set(config.categories[name])
            unknown = raw.notna() & ~raw.isin(allowed)
            findings.append(_finding(name, f"unknown category (allowed: {sorted(allowed)})", unknown, raw))
        clean[name] = raw
    for name in config.dates:
        raw = frame[name].astype("string")
        parsed = pd.to_datetime(raw, format="%Y-%m-%d", errors="coerce")
        findings.append(_finding(name, MISSING, raw.isna(), raw))
        findings.append(_finding(name, "not a YYYY-MM-DD date", raw.notna() & parsed.isna(), raw))
        days = parsed.dt.strftime("%Y-%m-%d").astype("string")
        day_bound = config.date_bound(name)
        if day_bound is not None:
            first, last = day_bound  # ISO days: text order is time order
            outside = ((days < first) | (days > last)).fillna(False).astype(bool)
            findings.append(_finding(name, f"outside [{first}, {last}]", outside, raw))
        clean[name] = days
    report.errors += [f for f in findings if f is not None]

    target = clean[config.target]
    if len(frame) < MIN_ROWS:
        report.errors.append(Finding(config.target, f"fewer than {MIN_ROWS} rows", len(frame)))
    elif target.notna().any() and float(target.std()) == 0.0:
        report.errors.append(Finding(config.target, "target is constant", len(frame), [(0, target.iloc[0])]))

    # Whole rows of the file: two rows alike in the configured columns but not elsewhere are two observations.
    duplicated = frame.duplicated(keep="first")
    if duplicated.any():
        dup = _finding("*", "exact duplicate of an earlier row of the file", duplicated, clean[config.target])
        assert dup is not None
        if config.drop_duplicates:
            report.dropped.append(dup)
            clean = clean[~duplicated]
        else:
            report.errors.append(dup)
    if report.errors:
        raise DataValidationError(report)
    clean = clean.reset_index(drop=True)
    report.rows_out = len(clean)
    return clean, report

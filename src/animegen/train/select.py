"""Checkpoint selection rules: which evaluated checkpoint to keep, and the regression gate.

Grammar (one string, the same in TOML `checkpoint_eval.rule` / `checkpoint_eval.gate` and the CLI
`--rule` / `--gate`):

    RULE := ("max" | "min") ":" METRIC [ "where" COND { "and" COND } ]
    GATE := COND { "and" COND }
    COND := METRIC OP REF          OP := "<=" | ">=" | "<" | ">"
    REF  := NUMBER | ("best" | "base") [ ("+" | "-") NUMBER ]

e.g. ``max:tag_adherence where fid <= best+5`` = the highest tag adherence among the checkpoints whose
FID is at most 5 above the best (lowest) FID of all candidates; gate ``tag_adherence >= base + 3`` = the
chosen checkpoint must beat the base model's tag adherence by 3 points. `best` is the best candidate value
in the metric's own direction (`LOWER_IS_BETTER`: fid, kid); `base` is the base model's value on the same
prompts. A tie on the objective goes to the earliest step (the least trained of equals). Values are the
`value` field of each metric in `RUN/metrics/checkpoints.jsonl` (tag adherence in points: percent).

Pure functions of the series rows: no model, no evaluation (`evaluate.checkpoint_eval` makes the rows).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from animegen.core.errors import AnimegenError

METRICS = ("tag_adherence", "tag_adherence_held_out", "clip_score", "clip_score_held_out", "fid", "kid")
LOWER_IS_BETTER = frozenset({"fid", "kid"})
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_COND = re.compile(r"^\s*(?P<metric>[a-z_]+)\s*(?P<op><=|>=|<|>)\s*(?:(?P<ref>best|base)\s*(?:(?P<sign>[+-])\s*"
                   r"(?P<off>\d+(?:\.\d*)?(?:e-?\d+)?))?|(?P<num>-?\d+(?:\.\d*)?(?:e-?\d+)?))\s*$")
_RULE = re.compile(r"^\s*(?P<obj>max|min)\s*:\s*(?P<metric>[a-z_]+)\s*(?:where\s+(?P<conds>.+))?$")


class RuleError(AnimegenError):
    """A selection rule or gate that does not parse, or names an unknown metric."""


class GateError(AnimegenError):
    """The chosen checkpoint failed the regression gate (the message holds the numbers)."""


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    ref: str  # "best", "base" or "value"
    offset: float  # the number after best/base (signed), or the literal value

    def bound(self, best: float | None, base: float | None) -> float | None:
        """The number the metric is compared with (None: the reference is not available)."""
        if self.ref == "value":
            return self.offset
        anchor = best if self.ref == "best" else base
        return None if anchor is None else anchor + self.offset

    def text(self) -> str:
        if self.ref == "value":
            return f"{self.metric} {self.op} {self.offset:g}"
        return f"{self.metric} {self.op} {self.ref}{self.offset:+g}" if self.offset else f"{self.metric} {self.op} {self.ref}"


@dataclass(frozen=True)
class Rule:
    objective: str  # "max" | "min"
    metric: str
    conditions: tuple[Condition, ...] = field(default_factory=tuple)

    def text(self) -> str:
        where = " and ".join(c.text() for c in self.conditions)
        return f"{self.objective}:{self.metric}" + (f" where {where}" if where else "")


def _metric(name: str, where: str) -> str:
    if name not in METRICS:
        raise RuleError(f"{where}: unknown metric {name!r}; use one of {', '.join(METRICS)}")
    return name


def parse_condition(text: str, where: str = "condition") -> Condition:
    m = _COND.match(text)
    if not m:
        raise RuleError(f"{where}: cannot parse {text!r}; write e.g. 'fid <= best+5' or 'tag_adherence >= base + 3'")
    metric = _metric(m["metric"], where)
    if m["num"] is not None:
        return Condition(metric, m["op"], "value", float(m["num"]))
    off = float(m["off"] or 0.0) * (-1 if m["sign"] == "-" else 1)
    return Condition(metric, m["op"], m["ref"], off)


def parse_rule(text: str) -> Rule:
    """`max:METRIC [where COND and ...]` -> Rule (RuleError naming the problem otherwise)."""
    m = _RULE.match(text or "")
    if not m:
        raise RuleError(f"rule {text!r}: write 'max:METRIC' or 'min:METRIC', optionally "
                        "'where fid <= best+5 and ...'")
    conds = tuple(parse_condition(c, f"rule {text!r}") for c in re.split(r"\s+and\s+", m["conds"])) if m["conds"] else ()
    return Rule(m["obj"], _metric(m["metric"], f"rule {text!r}"), conds)


def parse_gate(text: str) -> tuple[Condition, ...]:
    conds = tuple(parse_condition(c, f"gate {text!r}") for c in re.split(r"\s+and\s+", text.strip()))
    bad = [c.text() for c in conds if c.ref == "best"]
    if bad:
        raise RuleError(f"gate {text!r}: 'best' compares candidates with each other; a gate compares the chosen "
                        "checkpoint with 'base' or a number")
    return conds


def value(row: dict | None, metric: str) -> float | None:
    """`row["metrics"][metric]["value"]`, or None when the row lacks it."""
    entry = ((row or {}).get("metrics") or {}).get(metric)
    v = entry.get("value") if isinstance(entry, dict) else None
    return None if v is None else float(v)


def best_of(rows: list[dict], metric: str) -> float | None:
    vals = [v for v in (value(r, metric) for r in rows) if v is not None]
    if not vals:
        return None
    return min(vals) if metric in LOWER_IS_BETTER else max(vals)


def select(rows: list[dict], rule: Rule, base: dict | None = None) -> dict:
    """Apply `rule` to the checkpoint rows; a dict with `chosen` (a row or None), `candidates` (each with its
    numbers, `eligible` and the `reasons` it was excluded) and `bounds` (each condition's number).

    Rows whose checkpoint folder no longer exists (`checkpoint.keep_last` removed it) are not candidates."""
    present = [r for r in rows if r.get("path") is None or Path(r["path"]).is_dir()]
    bounds = {c.text(): c.bound(best_of(present, c.metric), value(base, c.metric)) for c in rule.conditions}
    candidates = []
    for row in rows:
        reasons = []
        if row not in present:
            reasons.append("checkpoint folder removed (raise checkpoint.keep_last to keep it)")
        if value(row, rule.metric) is None:
            reasons.append(f"no {rule.metric} value")
        for c in rule.conditions:
            v, b = value(row, c.metric), bounds[c.text()]
            if v is None or b is None:
                reasons.append(f"{c.text()}: {'no ' + c.metric if v is None else 'no ' + c.ref + ' value'}")
            elif not _OPS[c.op](v, b):
                reasons.append(f"{c.metric} = {v:.6g} fails {c.op} {b:.6g}")
        candidates.append({"step": row["step"], "path": row.get("path"), "metrics": {
            k: value(row, k) for k in (row.get("metrics") or {})}, "eligible": not reasons, "reasons": reasons})
    eligible = [r for r, c in zip(rows, candidates, strict=True) if c["eligible"]]
    sign = 1 if rule.objective == "max" else -1
    chosen = max(eligible, key=lambda r: (sign * value(r, rule.metric), -r["step"])) if eligible else None
    return {"rule": rule.text(), "chosen": chosen, "candidates": candidates, "bounds": bounds}


def check_gate(conds: tuple[Condition, ...], chosen: dict, base: dict | None) -> list[str]:
    """The gate's failures for the chosen row (empty: it passes), each with the numbers."""
    failures = []
    for c in conds:
        v, b = value(chosen, c.metric), c.bound(None, value(base, c.metric))
        if v is None or b is None:
            failures.append(f"{c.text()}: {'the chosen checkpoint has no ' + c.metric if v is None else 'no base value (checkpoint_eval.base = false?)'}")
        elif not _OPS[c.op](v, b):
            failures.append(f"{c.text()}: step {chosen['step']} has {c.metric} = {v:.6g}, needs {c.op} {b:.6g}")
    return failures

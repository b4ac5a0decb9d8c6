"""The Q/DQ checker's findings and report: what is wrong, where, and which rule says so."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

ERROR = "error"
WARNING = "warning"

# How many findings of one rule the text table shows before summarising the rest (to_dict() keeps all).
_TABLE_ROWS_PER_RULE = 12


@dataclass(frozen=True)
class Finding:
    """One problem in a Q/DQ graph: the rule broken, the node (and tensor) it concerns, and why it matters."""

    rule: str
    severity: str
    node: str
    tensor: str
    message: str

    def __str__(self) -> str:
        where = self.node + (f" [{self.tensor}]" if self.tensor else "")
        return f"{self.severity.upper()} {self.rule}: {where}: {self.message}"


@dataclass
class QdqReport:
    """All findings of check_qdq on one ONNX model, split into errors (fix before deploying) and warnings."""

    source: str
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings are allowed)."""
        return not self.errors

    @property
    def findings(self) -> list[Finding]:
        """Errors first, then warnings."""
        return [*self.errors, *self.warnings]

    def add(self, rule: str, severity: str, node: str, tensor: str, message: str) -> None:
        """Record one finding under its severity."""
        finding = Finding(rule, severity, node, tensor, message)
        (self.errors if severity == ERROR else self.warnings).append(finding)

    def by_rule(self, rule: str) -> list[Finding]:
        """All findings (errors and warnings) of one rule."""
        return [f for f in self.findings if f.rule == rule]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (all findings, no truncation)."""
        return {
            "source": self.source,
            "ok": self.ok,
            "stats": dict(self.stats),
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
        }

    def __str__(self) -> str:
        stats = ", ".join(f"{k}={v}" for k, v in self.stats.items())
        lines = [f"Q/DQ check of {self.source}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        if stats:
            lines.append(f"  {stats}")
        findings = self.findings
        if not findings:
            lines.append("  no findings")
            return "\n".join(lines)
        w_sev = max(len("severity"), *(len(f.severity) for f in findings))
        w_rule = max(len("rule"), *(len(f.rule) for f in findings))
        w_where = min(60, max(len("node [tensor]"), *(len(_where(f)) for f in findings)))
        lines.append(f"  {'severity':<{w_sev}}  {'rule':<{w_rule}}  {'node [tensor]':<{w_where}}  message")
        shown: Counter[str] = Counter()
        total = Counter(f.rule for f in findings)
        for f in findings:
            shown[f.rule] += 1
            if shown[f.rule] > _TABLE_ROWS_PER_RULE:
                if shown[f.rule] == _TABLE_ROWS_PER_RULE + 1:
                    lines.append(f"  {'':<{w_sev}}  {f.rule:<{w_rule}}  ... and {total[f.rule] - _TABLE_ROWS_PER_RULE}"
                                 f" more (see --json)")
                continue
            lines.append(f"  {f.severity:<{w_sev}}  {f.rule:<{w_rule}}  {_where(f):<{w_where}}  {f.message}")
        return "\n".join(lines)


def _where(f: Finding) -> str:
    return f.node + (f" [{f.tensor}]" if f.tensor else "")

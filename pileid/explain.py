"""Human- and machine-readable explanation of an ID, valid or not.

Used by the ops API (``/api/pileid/{text}``), ``pilegate pileid explain`` and
rejection logs: the point is that whoever looks at a refused charger sees what
it sent, segment by segment, and every rule it broke.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import ExplainedSegment, GunId, PileId, Problem
from .parse import IdKind, analyze

__all__ = ["Explanation", "explain"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """What an ID string means; ``pile``/``gun`` are set only when it is valid."""

    text: str
    valid: bool
    kind_of_id: IdKind | None
    segments: tuple[ExplainedSegment, ...]
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    pile: PileId | None
    gun: GunId | None
    # False when the length is wrong: the segments then assume the ID starts
    # with the region code and are a best guess, which the text output says.
    segments_certain: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (only str, bool, int, None, lists and dicts)."""
        return {
            "text": self.text,
            "valid": self.valid,
            "kind_of_id": self.kind_of_id,
            "segments": [s.to_dict() for s in self.segments],
            "segments_certain": self.segments_certain,
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
            "pile": self.pile.to_dict() if self.pile is not None else None,
            "gun": self.gun.to_dict() if self.gun is not None else None,
        }

    def to_text(self) -> str:
        """A readable multi-line block (no trailing newline)."""
        lines = [
            f"{self.text!r}: {self._verdict()}"
            if _needs_quotes(self.text)
            else f"{self.text}: {self._verdict()}"
        ]
        if self.segments and not self.segments_certain:
            lines.append("  (length is wrong: segments below assume the ID starts with the region)")
        width = max((len(s.digits) for s in self.segments), default=0)
        for seg in self.segments:
            lines.append(f"  {seg.segment.value:<9} {seg.digits:<{width}}  {seg.meaning}")
        for problem in (*self.errors, *self.warnings):
            lines.append(f"  {problem.severity}: {problem.message} [{problem.rule.value}]")
        return "\n".join(lines)

    def _verdict(self) -> str:
        if self.gun is not None:
            pile = self.gun.pile
            return f"valid gun ID: gun {self.gun.number} of {pile.kind.label} pile {pile.text}"
        if self.pile is not None:
            return f"valid {self.pile.kind.label} {self.pile.product.label} ID"
        return f"invalid {self.kind_of_id} ID" if self.kind_of_id else "invalid ID"


def _needs_quotes(text: str) -> bool:
    # Quote when the raw text would be ambiguous on a terminal (empty, spaces,
    # control characters) so "3101 0400" and "3101  0400" look different.
    return not text or not text.isprintable() or any(c.isspace() for c in text)


def explain(text: str) -> Explanation:
    """Decode a pile or gun ID and list every problem; never raises."""
    result = analyze(text, "any")
    return Explanation(
        text=text,
        valid=not result.errors,
        kind_of_id=result.kind_of_id,
        segments=result.segments,
        errors=result.errors,
        warnings=result.warnings,
        pile=result.pile,
        gun=result.gun,
        segments_certain=result.length_ok,
    )

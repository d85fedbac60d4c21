"""Feedback types: what each interaction's event name means (Gorse's positive / negative / read feedback).

- positive: the user wanted the item; it is history for recall and a positive for training, with
  weight = the rule's weight x the interaction's own weight (a watch ratio, a rating), 1 where none;
- negative ("dislike", "not interested"): never recalled for that user again, and one of their hard
  negatives in G's training;
- read (an impression not acted on): not history; recall leaves it out for `read_exclude_s`.

A rule may also turn low weights negative (`negative_at_most`): star ratings, where 1-2 stars is a dislike.
The map is a setting (`MMRECALL_EVENTS`, JSON); unknown event names are refused where interactions enter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["positive", "negative", "read"]
KINDS: tuple[Kind, ...] = ("positive", "negative", "read")


@dataclass(frozen=True)
class EventRule:
    kind: Kind = "positive"
    weight: float = 1.0  # multiplies the interaction's own weight (a positive's importance in training)
    negative_at_most: float | None = None  # an interaction weight at or below this is negative feedback

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"event kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not self.weight > 0:
            raise ValueError(f"an event's weight must be positive, not {self.weight}")

    def classify(self, weight: float | None) -> tuple[Kind, float]:
        """(kind, training weight) of one interaction with this event."""
        if self.negative_at_most is not None and weight is not None and weight <= self.negative_at_most:
            return "negative", self.weight
        return self.kind, self.weight * (1.0 if weight is None else weight)


POSITIVE = EventRule()

# "" is an interaction without an event name (datasets without the column): a positive
DEFAULT_EVENTS: dict[str, EventRule] = {
    "": EventRule(),
    "click": EventRule(),
    "view": EventRule(),
    "watch": EventRule(),  # its weight: the watch ratio
    "rating": EventRule(),  # its weight: the stars (`negative_at_most` makes low ones dislikes)
    "like": EventRule(weight=2.0),
    "share": EventRule(weight=2.0),
    "purchase": EventRule(weight=3.0),
    "impression": EventRule(kind="read"),
    "dislike": EventRule(kind="negative"),
    "not_interested": EventRule(kind="negative"),
}


def parse_rules(value: Mapping[str, Any] | None) -> dict[str, EventRule]:
    """A settings value ({name: {"kind", "weight", "negative_at_most"}}) as rules: the defaults, with the
    names it gives added or replaced. ValueError names what is wrong."""
    rules = dict(DEFAULT_EVENTS)
    if not value:
        return rules
    for name, fields in value.items():
        if not isinstance(fields, Mapping):
            raise ValueError(f"event {name!r}: expected an object with kind and weight, got {fields!r}")
        unknown = sorted(set(fields) - set(EventRule.__dataclass_fields__))
        if unknown:
            raise ValueError(f"event {name!r}: unknown fields {unknown}; known: kind, weight, negative_at_most")
        rules[str(name)] = EventRule(**fields)
    return rules


class UnknownEvent(ValueError):
    """An interaction's event name is not in the event map (HTTP 400, a CLI error)."""


def check_events(names: Iterable[str | None], rules: Mapping[str, EventRule]) -> None:
    unknown = sorted({name or "" for name in names} - set(rules))
    if unknown:
        known = ", ".join(repr(n) if n else "'' (none)" for n in rules)
        raise UnknownEvent(f"unknown event names {unknown[:20]}; known: {known} (set MMRECALL_EVENTS to add some)")

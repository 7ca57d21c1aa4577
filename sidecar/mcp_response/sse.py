"""Server-sent events (text/event-stream), read and written back field by field.

Only what the response path needs: events split on blank lines, ``data:`` lines joined with
``\\n`` (the HTML spec's event-stream parsing); other fields (``id``, ``event``, ``retry``) and
comments are kept as they were."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Event:
    lines: list[tuple[str, str]]  # (field, value) in order; comments have field ""

    @property
    def data(self) -> str | None:
        values = [value for name, value in self.lines if name == "data"]
        return "\n".join(values) if values else None

    def with_data(self, data: str) -> Event:
        """The event with its data replaced (one ``data:`` line per line of ``data``), where the first was."""
        out: list[tuple[str, str]] = []
        placed = False
        for name, value in self.lines:
            if name == "data":
                if not placed:
                    out.extend(("data", line) for line in data.split("\n"))
                    placed = True
                continue
            out.append((name, value))
        if not placed:
            out.extend(("data", line) for line in data.split("\n"))
        return Event(out)


def parse(body: str) -> list[Event]:
    """The events of a complete stream; a trailing event without its blank line still counts."""
    events: list[Event] = []
    current: list[tuple[str, str]] = []
    for raw in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if raw == "":
            if current:
                events.append(Event(current))
                current = []
            continue
        if raw.startswith(":"):
            current.append(("", raw[1:]))
            continue
        name, colon, value = raw.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        current.append((name, value))
    if current:
        events.append(Event(current))
    return events


def serialize(events: list[Event]) -> str:
    parts = []
    for event in events:
        lines = [f":{value}" if name == "" else f"{name}: {value}" for name, value in event.lines]
        parts.append("\n".join(lines) + "\n\n")
    return "".join(parts)

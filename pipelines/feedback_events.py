"""Feedback events of a time range as dicts, for the analyses that run after the registry (A/B, drift).

The files are found and read as PrepareFeedback finds and reads them (``steps.prepare_io``: the
hour folders that can hold the range's events, late arrivals included; gzip objects read up to a
break) and every line is validated with the one event schema (``models.events.parse_line``).
What does not validate is skipped here but counted (``FeedbackEvents.invalid_lines`` and
``unreadable_files``): prepare quarantines the same lines with their reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from models.events import InvalidEvent, parse_line
from models import layout
from steps.prepare_io import read_file, split_lines


@dataclass
class FeedbackEvents:
    events: list[dict[str, Any]] = field(default_factory=list)
    invalid_lines: int = 0
    unreadable_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"events": len(self.events), "invalid_lines": self.invalid_lines,
                "unreadable_files": self.unreadable_files}


def read_events(feedback_uri: str, start: datetime, end: datetime) -> FeedbackEvents:
    """Valid events that arrived in the hour folders of ``[start, end)`` and the lateness after it;
    predictions outside the range are left out (their outcomes count for the request's time). The
    dicts keep optional fields the schema ignores, such as ``latency_ms``; ``ts`` is parsed."""
    read = FeedbackEvents()
    for uri in layout.feedback_files(feedback_uri, start, end, as_of=end).files:
        content, error = read_file(uri)
        if error is not None:
            read.unreadable_files.append(uri)
        for line in split_lines(content):
            if not line.strip():
                continue
            try:
                event = parse_line(line)
            except InvalidEvent:
                read.invalid_lines += 1
                continue
            if event.event_type == "prediction" and not start <= event.ts < end:
                continue
            data = orjson.loads(line)
            data["ts"] = event.ts
            read.events.append(data)
    return read

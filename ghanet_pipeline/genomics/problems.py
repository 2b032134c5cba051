"""Problem lines of the genomics stage: each is one line in report.txt and a warning on the console."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Console lines per problem kind; report.txt always has all of them.
CONSOLE_LINES_PER_KIND = 20


class GenomicsError(ValueError):
    """The cohort table (or its joins) cannot be used as it is."""


@dataclass
class Problems:
    """Problem lines for report.txt, logged as they come (capped per kind on the console)."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _per_kind: Counter = field(default_factory=Counter)

    def add(self, kind: str, text: str) -> None:
        self.lines.append(text)
        self._per_kind[kind] += 1
        if self._per_kind[kind] <= CONSOLE_LINES_PER_KIND:
            log.warning("%s", text)
        elif self._per_kind[kind] == CONSOLE_LINES_PER_KIND + 1:
            log.warning("more problems of kind '%s' follow; see report.txt for all of them", kind)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.info("%s", text)

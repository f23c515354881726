"""The rules subsystem's one exception."""

from __future__ import annotations

from collections.abc import Iterable

Problem = tuple[str, int, str]
"""`(file, line, message)`; line 0 means the path as a whole (missing file, empty directory)."""


class RuleError(Exception):
    """Invalid rules; `problems` holds every problem found, not just the first.

    `str()` gives one `file:line: message` per line, the format of `halflife rules check`.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    @property
    def lines(self) -> list[str]:
        return [f"{file}:{line}: {message}" for file, line, message in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines)

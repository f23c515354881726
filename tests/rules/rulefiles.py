"""Rule files for the loader tests (tests/rules, tests/fuzz): the SPEC example, writing a file, reading its problems.

Not a test module: imported as `tests.rules.rulefiles`.
"""

from __future__ import annotations

import re
import tempfile
import textwrap
from pathlib import Path

import pytest

from rules import RuleError, RuleSet, load_rules

LINE = re.compile(r"^[^:]+:\d+: .+$")  # one line of a RuleError: `file:line: message`

# SPEC §3, verbatim.
SPEC_EXAMPLE = """\
version: 1
lateness: 5m                 # allowed event-time disorder (default 0s)
scores:
  engagement:
    half_life: 7d            # the score halves every 7 days without activity
    min: 0                   # optional clamps, applied after every update
    max: 100
    points:
      - {event: Page Viewed, where: {properties.path: {startswith: /pricing}}, add: 3}
      - {event: Email Opened, add: 2}
      - {event: Unsubscribed, add: -20}
triggers:
  hot_lead:
    when: {score: engagement, rises_above: 10}
    unless: {event: Order Completed, within: 30d}
    cooldown: 1d
    actions: [{emit: sales_alerts}, {tag: hot}]
  pricing_binge:
    when: {count: {event: Page Viewed, where: {properties.path: {startswith: /pricing}}},
           within: 1h, at_least: 3}
    actions: [{emit: sales_alerts}]
  cart_abandoned:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 30m}
    cooldown: 1d
    actions: [{emit: email}]
  cooling_off:
    when: {score: engagement, falls_below: 2}
    actions: [{untag: hot}]
  gone_quiet:
    when: {inactive_for: 30d}
    actions: [{emit: email}, {stage: dormant}]
"""


def write(directory: Path, text: str, name: str = "rules.yaml") -> str:
    """Write `text`, dedented, to `directory/name`; its path."""
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def problems(path: str) -> list[tuple[int, str]]:
    """(line, message) of every problem, all of which must be in `path`."""
    with pytest.raises(RuleError) as info:
        load_rules(path)
    assert {file for file, _, _ in info.value.problems} == {path}
    return [(line, message) for _, line, message in info.value.problems]


def outcome(data: bytes) -> RuleSet | RuleError:
    """Load `data` as a rule file: a RuleSet, or a RuleError whose every line is `file:line: message`
    pointing into the file. Anything else (an exception, a traceback) fails the test."""
    with tempfile.TemporaryDirectory(prefix="halflife-rules-") as directory:
        path = str(Path(directory) / "rules.yaml")
        Path(path).write_bytes(data)
        try:
            return load_rules(path)
        except RuleError as error:
            assert error.problems
            text = str(error)
            lines = text.split("\n")
            assert len(lines) == len(error.problems)
            for line in lines:
                assert LINE.match(line), line
                assert line.startswith(path + ":")
            # YAML's line breaks: also a lone CR, NEL, LS and PS (an editor may count them differently).
            max_line = len(re.findall(r"\r\n|[\r\n\x85\u2028\u2029]", data.decode("utf-8", "replace"))) + 2
            assert all(1 <= line <= max_line for _, line, _ in error.problems), error.problems
            return error

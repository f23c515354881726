"""Loading and validating rule files (SPEC §3) into the frozen `rules.model` objects.

YAML is parsed with PyYAML's safe loader but only *composed*: every value keeps its
node and so its line, and every problem is reported as `file:line: path: message`,
where `path` names the place in the rules (`triggers.hot_lead.when.within`).
Validation goes on after a problem so that one run lists all of them.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Sequence as SequenceOf
from typing import Any, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from rules.durations import parse_duration
from rules.errors import Problem, RuleError
from rules.model import (
    MAX_TIMER_TRIGGERS,
    Action,
    Condition,
    Condition_,
    CountWithin,
    FallsBelow,
    MatcherSpec,
    Origin,
    PointsSpec,
    RisesAbove,
    RuleSet,
    ScoreSpec,
    Sequence,
    TriggerSpec,
    Unless,
)

__all__ = ["load_rules", "check_rules", "MAX_FILE_BYTES", "MAX_DEPTH", "MAX_AT_LEAST"]

# Rule files are written by hand; these bounds only stop hostile or broken input
# from taking the memory or the stack of the process that loads them.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
# A count keeps the last `at_least` matching times of every contact (operators/counts.py),
# so K is memory per contact per rule.
MAX_AT_LEAST = 1000

_YAML_TAG = "tag:yaml.org,2002:"
_STR = _YAML_TAG + "str"
_NULL = _YAML_TAG + "null"
_BOOL = _YAML_TAG + "bool"
_INT = _YAML_TAG + "int"
_FLOAT = _YAML_TAG + "float"
# A plain `2026-11-23` resolves to a timestamp; events carry times as strings, so it
# is kept as its text.
_TIMESTAMP = _YAML_TAG + "timestamp"
_MAP = _YAML_TAG + "map"
_SEQ = _YAML_TAG + "seq"
_TEXT_TAGS = (_STR, _TIMESTAMP)
_KEY_TAGS = (*_TEXT_TAGS, _BOOL, _INT, _FLOAT)

_TOP_KEYS = ("version", "lateness", "scores", "triggers")
_SCORE_KEYS = ("half_life", "min", "max", "points")
_POINTS_KEYS = ("event", "where", "add")
_MATCHER_KEYS = ("event", "where")
_UNLESS_KEYS = ("event", "where", "within")
_TRIGGER_KEYS = ("when", "unless", "cooldown", "actions")
# Each condition is recognised by its first key; the others belong to it.
_CONDITION_KEYS: dict[str, tuple[str, ...]] = {
    "score": ("score", "rises_above", "falls_below"),
    "count": ("count", "within", "at_least"),
    "first": ("first", "then_not", "within"),
    "inactive_for": ("inactive_for", "activity"),
}
_ALL_CONDITION_KEYS = tuple(dict.fromkeys(k for keys in _CONDITION_KEYS.values() for k in keys))
_ACTION_KINDS = ("emit", "tag", "untag", "stage")
_OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "startswith", "contains", "exists")

_SCALARS = {
    _NULL: SafeConstructor.construct_yaml_null,
    _BOOL: SafeConstructor.construct_yaml_bool,
    _INT: SafeConstructor.construct_yaml_int,
    _FLOAT: SafeConstructor.construct_yaml_float,
}
_CONSTRUCTOR = SafeConstructor()


class _Invalid:
    """The value of a node that could not be read (its problem is already reported)."""


_INVALID: Any = _Invalid()
_T = TypeVar("_T")


class _RefusedYAML(yaml.MarkedYAMLError):
    """Valid YAML that rule files do not accept (aliases, deep nesting)."""


class _Loader(yaml.SafeLoader):
    """Composes one document, refusing aliases and nesting deeper than MAX_DEPTH.

    Aliases are refused outright: rule files never need them, and a few lines of them
    ("billion laughs") expand to more nodes than memory holds. Deep nesting is refused
    because composing recurses once per level.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()
        # The stubs allow libyaml's Mark too; the pure-Python composer only makes yaml.Mark.
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise _RefusedYAML(
                problem=f"YAML alias *{event.anchor} is not allowed in rule files (aliases can expand "
                "exponentially); write the value out in full",
                problem_mark=mark,
            )
        if self._depth >= MAX_DEPTH:
            raise _RefusedYAML(
                problem=f"nested deeper than {MAX_DEPTH} levels; rule files never need that many",
                problem_mark=mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _plain(node: Node) -> Any:
    """The Python value of a scalar with a standard tag, else _INVALID (not reported)."""
    if not isinstance(node, ScalarNode):
        return _INVALID
    if node.tag in _TEXT_TAGS:
        return node.value
    construct = _SCALARS.get(node.tag)
    if construct is None:
        return _INVALID
    try:
        return construct(_CONSTRUCTOR, node)
    except Exception:
        # An explicit tag on text that does not fit it (`!!int x`, `!!int` alone): PyYAML
        # then raises ValueError, KeyError or IndexError, depending on the text.
        return _INVALID


def _tag(node: Node) -> str:
    return "!!" + node.tag[len(_YAML_TAG) :] if node.tag.startswith(_YAML_TAG) else node.tag


def _show(node: Node) -> str:
    """The node's value for a message: its repr, or what kind of collection it is."""
    if isinstance(node, MappingNode):
        return "a map" if node.tag == _MAP else f"a map tagged {_tag(node)}"
    if isinstance(node, SequenceNode):
        return "a list" if node.tag == _SEQ else f"a list tagged {_tag(node)}"
    value = _plain(node)
    if value is _INVALID:
        return f"{node.value!r} tagged {_tag(node)}"
    return "null" if value is None else repr(value)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _unknown(key: str, allowed: SequenceOf[str], kind: str = "key") -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {key!r}{hint}; allowed {kind}s: {', '.join(allowed)}"


Fields = dict[str, tuple[ScalarNode, Node]]
"""A validated map: key -> (key node, value node), in file order."""


class _Builder:
    """Validates files one after another into one rule set, collecting every problem."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.sources: list[str] = []
        self.file = ""
        self.lateness: tuple[int, str, Origin] | None = None
        self.scores: list[ScoreSpec] = []
        self.triggers: list[TriggerSpec] = []
        # Names are recorded even when their definition is invalid, so that a bad
        # definition is reported once and not again as "undefined" by every user.
        self.score_origins: dict[str, Origin] = {}
        self.trigger_origins: dict[str, Origin] = {}
        self.score_refs: list[tuple[str, str, int, str]] = []
        # A file that could not be read at all may define the scores others refer to.
        self.incomplete = False

    # -- reporting ---------------------------------------------------------------

    def err(self, node: Node, path: str, message: str) -> None:
        self.problems.append((self.file, _line(node), f"{path}: {message}"))

    def file_err(self, line: int, message: str) -> None:
        self.problems.append((self.file, line, message))
        self.incomplete = True

    # -- files -------------------------------------------------------------------

    def load_file(self, file: str) -> None:
        self.file = file
        self.sources.append(file)
        root = self._compose(file)
        if root is None:
            return
        if not isinstance(root, MappingNode):
            self.file_err(_line(root), f"the top level must be a map of {', '.join(_TOP_KEYS)}; got {_show(root)}")
            return
        fields = self._fields(root, "top level", "a map", _TOP_KEYS, root)
        if fields is None:
            self.incomplete = True
            return
        self._version(fields, root)
        if "lateness" in fields:
            self._lateness(*fields["lateness"])
        if "scores" in fields:
            for key, name, node in self._named_entries(fields["scores"][1], "scores"):
                self._score(key, name, node)
        if "triggers" in fields:
            for key, name, node in self._named_entries(fields["triggers"][1], "triggers"):
                self._trigger(key, name, node)

    def _compose(self, file: str) -> Node | None:
        """The file's root node, or None after reporting why there is none."""
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            self.problems.append((file, 0, f"cannot read rules: {e.strerror or e}"))
            self.incomplete = True
            return None
        if len(data) > MAX_FILE_BYTES:
            self.file_err(1, f"file is over {MAX_FILE_BYTES} bytes; split the rules into several files")
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            self.file_err(line, f"file is not UTF-8: byte 0x{data[e.start]:02x} at column {column}; save it as UTF-8")
            return None
        try:
            loader = _Loader(text)
            try:
                root = loader.get_single_node()
            finally:
                loader.dispose()
        except _RefusedYAML as e:
            self.file_err(_mark_line(e), str(e.problem))
            return None
        except yaml.MarkedYAMLError as e:
            what = ", ".join(str(part) for part in (e.context, e.problem) if part)
            self.file_err(_mark_line(e), f"invalid YAML: {what}")
            return None
        except ReaderError as e:
            line = text.count("\n", 0, e.position) + 1
            code = e.character if isinstance(e.character, int) else ord(e.character)
            self.file_err(line, f"invalid YAML: character U+{code:04X} is not allowed in YAML; remove it")
            return None
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            self.file_err(1, "file is empty; a rules file starts with 'version: 1'")
            return None
        return root

    # -- structure ---------------------------------------------------------------

    def _entries(self, node: Node, path: str, expected: str) -> list[tuple[ScalarNode, str, Node]] | None:
        """The (key node, key, value node) of a map with unique string keys, or None if not a map."""
        if not (isinstance(node, MappingNode) and node.tag == _MAP):
            self.err(node, path, f"expected {expected}, got {_show(node)}")
            return None
        entries: list[tuple[ScalarNode, str, Node]] = []
        seen: dict[str, ScalarNode] = {}
        for key_node, value_node in node.value:
            # Every key of a rule file is a name or a path, so a plain `yes:` or `404:` means its
            # text, although YAML 1.1 reads it as a bool or a number.
            if not (isinstance(key_node, ScalarNode) and key_node.tag in _KEY_TAGS):
                self.err(key_node, path, f"keys must be strings, got {_show(key_node)}")
                continue
            if not key_node.value:
                self.err(key_node, path, "keys must not be empty")
                continue
            key = key_node.value
            if key in seen:
                self.err(
                    key_node,
                    path,
                    f"duplicate key {key!r} (first on line {_line(seen[key])}); each key may appear once",
                )
                continue
            seen[key] = key_node
            entries.append((key_node, key, value_node))
        return entries

    def _fields(self, node: Node, path: str, expected: str, allowed: SequenceOf[str], owner: Node) -> Fields | None:
        """A map whose keys must be among `allowed`; unknown keys are reported and dropped.

        `owner` is where "missing key" problems point: the key that introduces the map.
        """
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            # An empty value (`when:`) belongs to the line of its key.
            self.err(owner, path, f"expected {expected}, got nothing")
            return None
        entries = self._entries(node, path, expected)
        if entries is None:
            return None
        fields: Fields = {}
        for key_node, key, value_node in entries:
            if key in allowed:
                fields[key] = (key_node, value_node)
            else:
                self.err(key_node, path, _unknown(key, allowed))
        return fields

    def _require(self, fields: Fields, key: str, owner: Node, path: str, example: str) -> Node | None:
        if key in fields:
            return fields[key][1]
        self.err(owner, path, f"missing {key!r}; add it, e.g. {example}")
        return None

    def _named_entries(self, node: Node, section: str) -> list[tuple[ScalarNode, str, Node]]:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []
        entries = self._entries(node, section, f"a map from {section[:-1]} name to its definition")
        if entries is None:
            self.incomplete = True
            return []
        return entries

    # -- values ------------------------------------------------------------------

    def _string(self, node: Node, path: str) -> str | None:
        if isinstance(node, ScalarNode) and node.tag in _TEXT_TAGS:
            if node.value:
                return str(node.value)
            self.err(node, path, "expected a non-empty string, got ''")
            return None
        hint = ""
        if isinstance(node, ScalarNode) and node.style is None and node.value:
            hint = f"; to mean the text {node.value!r}, quote it"
        self.err(node, path, f"expected a string, got {_show(node)}{hint}")
        return None

    def _number(self, node: Node, path: str) -> float | None:
        value = _plain(node)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
            self.err(node, path, f"expected a finite number, got {_show(node)}")
            return None
        self.err(node, path, f"expected a number, got {_show(node)}")
        return None

    def _duration(self, node: Node, path: str, zero_ok: bool = False) -> int | None:
        value = _plain(node)
        if value is _INVALID:
            self.err(node, path, f"expected a duration such as '30m', got {_show(node)}")
            return None
        try:
            ms = parse_duration(value)
        except ValueError as e:
            self.err(node, path, str(e))
            return None
        if ms == 0 and not zero_ok:
            self.err(node, path, f"duration must be greater than 0, got {value!r}")
            return None
        return ms

    def _json(self, node: Node, path: str) -> Any:
        """A JSON literal: arrays become tuples (the model is immutable), objects dicts."""
        if isinstance(node, ScalarNode):
            value = _plain(node)
            if value is _INVALID:
                self.err(
                    node,
                    path,
                    f"unsupported value {_show(node)}; use a string, number, true, false, null, list or map",
                )
            elif isinstance(value, float) and not math.isfinite(value):
                self.err(node, path, f"{_show(node)} is not a JSON number; use a finite number")
                return _INVALID
            return value
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            items = [self._json(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            return _INVALID if any(item is _INVALID for item in items) else tuple(items)
        entries = self._entries(node, path, "a string, number, true, false, null, list or map")
        if entries is None:
            return _INVALID
        obj = {key: self._json(value, f"{path}.{key}") for _, key, value in entries}
        return _INVALID if any(v is _INVALID for v in obj.values()) else obj

    # -- sections ----------------------------------------------------------------

    def _version(self, fields: Fields, root: Node) -> None:
        node = self._require(fields, "version", root, "top level", "'version: 1' as the first line")
        if node is None:
            return
        value = _plain(node)
        if not (type(value) is int and value == 1):
            self.err(node, "version", f"unsupported version {_show(node)}; this halflife reads version: 1")

    def _lateness(self, key: ScalarNode, node: Node) -> None:
        ms = self._duration(node, "lateness", zero_ok=True)
        if ms is None:
            return
        origin = Origin(self.file, _line(key))
        if self.lateness is None:
            self.lateness = (ms, node.value, origin)
        elif self.lateness[0] != ms:
            _, first_text, first_origin = self.lateness
            self.err(
                node,
                "lateness",
                f"{node.value!r} differs from {first_text!r} set at {first_origin}; set lateness in one file only",
            )

    def _score(self, key: ScalarNode, name: str, node: Node) -> None:
        path = f"scores.{name}"
        origin = Origin(self.file, _line(key))
        if not self._new_name(name, origin, key, path, "score", self.score_origins):
            return
        fields = self._fields(node, path, "a map with half_life and points", _SCORE_KEYS, key)
        if fields is None:
            return
        ok = True
        half_life_ms: int | None = None
        half_life = self._require(fields, "half_life", key, path, "half_life: 7d")
        if half_life is not None:
            half_life_ms = self._duration(half_life, f"{path}.half_life")
        clamps: dict[str, float | None] = {"min": None, "max": None}
        for bound, sign, rule in (("min", 1, "<= 0"), ("max", -1, ">= 0")):
            if bound not in fields:
                continue
            bound_node = fields[bound][1]
            value = self._number(bound_node, f"{path}.{bound}")
            if value is not None and value * sign > 0:
                # Decay pulls every score towards 0 and is never clamped, so 0 must be in range.
                self.err(
                    bound_node,
                    f"{path}.{bound}",
                    f"must be {rule} (scores start at 0 and decay towards 0), got {_show(bound_node)}",
                )
                value = None
            ok = ok and value is not None
            clamps[bound] = value
        points = self._points(fields, key, path)
        if ok and half_life_ms is not None and points is not None:
            self.scores.append(ScoreSpec(name, half_life_ms, clamps["min"], clamps["max"], points, origin))

    def _points(self, fields: Fields, key: ScalarNode, path: str) -> tuple[PointsSpec, ...] | None:
        node = self._require(fields, "points", key, path, "points: [{event: Page Viewed, add: 1}]")
        if node is None:
            return None
        path = f"{path}.points"
        if not (isinstance(node, SequenceNode) and node.tag == _SEQ and node.value):
            shown = "[]" if isinstance(node, SequenceNode) and not node.value else _show(node)
            self.err(node, path, f"expected a non-empty list such as [{{event: Page Viewed, add: 1}}], got {shown}")
            return None
        points: list[PointsSpec | None] = []
        for i, item in enumerate(node.value):
            item_path = f"{path}[{i}]"
            entry = self._fields(item, item_path, "a map such as {event: Page Viewed, add: 1}", _POINTS_KEYS, item)
            if entry is None:
                points.append(None)
                continue
            matcher = self._matcher(entry, item_path)
            add_node = self._require(entry, "add", item, item_path, "add: 1")
            add = None if add_node is None else self._number(add_node, f"{item_path}.add")
            points.append(None if matcher is None or add is None else PointsSpec(matcher, add))
        return _complete(points)

    def _trigger(self, key: ScalarNode, name: str, node: Node) -> None:
        path = f"triggers.{name}"
        origin = Origin(self.file, _line(key))
        if not self._new_name(name, origin, key, path, "trigger", self.trigger_origins):
            return
        fields = self._fields(node, path, "a map with when and actions", _TRIGGER_KEYS, key)
        if fields is None:
            return
        when_node = self._require(fields, "when", key, path, "when: {score: engagement, rises_above: 10}")
        when = None if when_node is None else self._when(when_node, fields["when"][0], f"{path}.when")
        unless: Unless | None = None
        unless_ok = True
        if "unless" in fields:
            unless_key, unless_node = fields["unless"]
            unless = self._unless(unless_node, unless_key, f"{path}.unless")
            unless_ok = unless is not None
        cooldown_ms: int | None = 0
        if "cooldown" in fields:
            cooldown_ms = self._duration(fields["cooldown"][1], f"{path}.cooldown")
        actions: tuple[Action, ...] | None = ()
        if "actions" in fields:
            actions = self._actions(fields["actions"][1], f"{path}.actions")
        if when is not None and unless_ok and cooldown_ms is not None and actions is not None:
            self.triggers.append(TriggerSpec(name, when, unless, cooldown_ms, actions, origin))

    def _new_name(self, name: str, origin: Origin, key: ScalarNode, path: str, kind: str, origins: dict[str, Origin]) -> bool:
        first = origins.get(name)
        if first is not None:
            # Within one file a repeated key is already reported as a duplicate key.
            self.err(key, path, f"{kind} {name!r} is already defined at {first}; rename one of them")
            return False
        origins[name] = origin
        return True

    def _when(self, node: Node, owner: ScalarNode, path: str) -> Condition_ | None:
        expected = "a map with one condition such as {score: engagement, rises_above: 10}"
        reported = len(self.problems)
        entries = self._fields(node, path, expected, _ALL_CONDITION_KEYS, owner)
        if entries is None:
            return None
        heads = [k for k in entries if k in _CONDITION_KEYS]
        if not heads:
            if len(self.problems) == reported:  # no misspelt key already explains it
                self.err(owner, path, f"no condition; use exactly one of {', '.join(_CONDITION_KEYS)}")
            return None
        if len(heads) > 1:
            self.err(
                entries[heads[1]][0],
                path,
                f"{len(heads)} conditions ({', '.join(heads)}); a trigger has exactly one, so split it into several triggers",
            )
            return None
        kind = heads[0]
        allowed = _CONDITION_KEYS[kind]
        fields: Fields = {}
        for key, (key_node, value_node) in entries.items():
            if key in allowed:
                fields[key] = (key_node, value_node)
            else:
                owners = " or ".join(k for k, keys in _CONDITION_KEYS.items() if key in keys)
                self.err(
                    key_node,
                    path,
                    f"{key!r} belongs to a {owners} condition, not to a {kind} condition; "
                    f"allowed keys here: {', '.join(allowed)}",
                )
        # The condition's own keys are still checked, so that one run reports all problems.
        if kind == "score":
            when = self._score_condition(fields, owner, path)
        elif kind == "count":
            when = self._count_condition(fields, owner, path)
        elif kind == "first":
            when = self._sequence_condition(fields, owner, path)
        else:
            when = self._inactive_condition(fields, path)
        return when if len(fields) == len(entries) else None

    def _score_condition(self, fields: Fields, owner: Node, path: str) -> Condition_ | None:
        score_node = fields["score"][1]
        score = self._string(score_node, f"{path}.score")
        if score is not None:
            self.score_refs.append((score, self.file, _line(score_node), f"{path}.score"))
        edges = [k for k in ("rises_above", "falls_below") if k in fields]
        if len(edges) != 1:
            problem = "both rises_above and falls_below" if edges else "neither rises_above nor falls_below"
            self.err(
                owner,
                path,
                f"a score condition needs exactly one of rises_above and falls_below; got {problem}",
            )
            return None
        threshold_node = fields[edges[0]][1]
        threshold = self._number(threshold_node, f"{path}.{edges[0]}")
        if threshold is None or score is None:
            return None
        if edges[0] == "rises_above":
            return RisesAbove(score, threshold)
        if threshold <= 0:
            # A decaying score only approaches 0, so it never falls below a threshold <= 0.
            self.err(
                threshold_node,
                f"{path}.falls_below",
                f"must be greater than 0 (a score decays towards 0 without reaching it), got {_show(threshold_node)}",
            )
            return None
        return FallsBelow(score, threshold)

    def _count_condition(self, fields: Fields, owner: Node, path: str) -> Condition_ | None:
        matcher = self._matcher_at(fields["count"], f"{path}.count")
        within_node = self._require(fields, "within", owner, path, "within: 1h")
        within = None if within_node is None else self._duration(within_node, f"{path}.within")
        at_least_node = self._require(fields, "at_least", owner, path, "at_least: 3")
        at_least = None
        if at_least_node is not None:
            value = _plain(at_least_node)
            if type(value) is int and 1 <= value <= MAX_AT_LEAST:
                at_least = value
            else:
                self.err(
                    at_least_node,
                    f"{path}.at_least",
                    f"expected a whole number from 1 to {MAX_AT_LEAST}, got {_show(at_least_node)}",
                )
        if matcher is None or within is None or at_least is None:
            return None
        return CountWithin(matcher, within, at_least)

    def _sequence_condition(self, fields: Fields, owner: Node, path: str) -> Condition_ | None:
        first = self._matcher_at(fields["first"], f"{path}.first")
        then_not_node = self._require(fields, "then_not", owner, path, "then_not: {event: Order Completed}")
        then_not = None
        if then_not_node is not None:
            then_not = self._matcher_at(fields["then_not"], f"{path}.then_not")
        within_node = self._require(fields, "within", owner, path, "within: 30m")
        within = None if within_node is None else self._duration(within_node, f"{path}.within")
        if first is None or then_not is None or within is None:
            return None
        return Sequence(first, then_not, within)

    def _inactive_condition(self, fields: Fields, path: str) -> Condition_ | None:
        within = self._duration(fields["inactive_for"][1], f"{path}.inactive_for")
        activity: MatcherSpec | None = MatcherSpec(None)
        if "activity" in fields:
            activity = self._matcher_at(fields["activity"], f"{path}.activity")
        if within is None or activity is None:
            return None
        return Sequence(activity, activity, within)

    def _unless(self, node: Node, owner: ScalarNode, path: str) -> Unless | None:
        fields = self._fields(node, path, "a map such as {event: Order Completed, within: 30d}", _UNLESS_KEYS, owner)
        if fields is None:
            return None
        matcher = self._matcher(fields, path)
        within_node = self._require(fields, "within", owner, path, "within: 30d")
        within = None if within_node is None else self._duration(within_node, f"{path}.within")
        if matcher is None or within is None:
            return None
        return Unless(matcher, within)

    def _actions(self, node: Node, path: str) -> tuple[Action, ...] | None:
        if not (isinstance(node, SequenceNode) and node.tag == _SEQ and node.value):
            shown = "[]" if isinstance(node, SequenceNode) and not node.value else _show(node)
            self.err(
                node,
                path,
                f"expected a non-empty list of actions such as [{{emit: email}}], got "
                f"{shown}; leave actions out to emit to the 'triggers' channel",
            )
            return None
        actions: list[Action | None] = []
        seen: dict[Action, int] = {}
        for i, item in enumerate(node.value):
            item_path = f"{path}[{i}]"
            entries = self._entries(item, item_path, "an action such as {emit: email}")
            if entries is None:
                actions.append(None)
                continue
            if len(entries) != 1:
                keys = ", ".join(k for _, k, _ in entries) or "none"
                self.err(
                    item,
                    item_path,
                    f"an action has exactly one key, such as {{emit: email}}; got {len(entries)} ({keys})",
                )
                actions.append(None)
                continue
            key_node, kind, value_node = entries[0]
            if kind not in _ACTION_KINDS:
                self.err(key_node, item_path, _unknown(kind, _ACTION_KINDS, "action"))
                actions.append(None)
                continue
            value = self._string(value_node, f"{item_path}.{kind}")
            action = None if value is None else Action(kind, value)  # type: ignore[arg-type]
            if action is not None and action in seen:
                # Two identical emits would give two records with the same trigger id.
                message = f"{{{kind}: {value}}} is already listed as actions[{seen[action]}]"
                self.err(item, item_path, f"{message}; list each action once")
                action = None
            elif action is not None:
                seen[action] = i
            actions.append(action)
        return _complete(actions)

    # -- matchers ----------------------------------------------------------------

    def _matcher_at(self, entry: tuple[ScalarNode, Node], path: str) -> MatcherSpec | None:
        """A matcher that is the whole value of a key (`count: {event: ...}`)."""
        owner, node = entry
        fields = self._fields(node, path, "a matcher such as {event: Product Added}", _MATCHER_KEYS, owner)
        return None if fields is None else self._matcher(fields, path)

    def _matcher(self, fields: Fields, path: str) -> MatcherSpec | None:
        """The `event` and `where` of an already key-checked map."""
        events: frozenset[str] | None = None
        events_ok = True
        if "event" in fields:
            events = self._event_names(fields["event"][1], f"{path}.event")
            events_ok = events is not None
        where: tuple[Condition, ...] | None = ()
        if "where" in fields:
            where = self._where(fields["where"][1], fields["where"][0], f"{path}.where")
        if not events_ok or where is None:
            return None
        return MatcherSpec(events, where)

    def _event_names(self, node: Node, path: str) -> frozenset[str] | None:
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            if not node.value:
                self.err(
                    node,
                    path,
                    "expected an event name or a non-empty list of names, got []; leave event out to match every event",
                )
                return None
            names = [self._string(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            complete = _complete(names)
            return None if complete is None else frozenset(complete)
        name = self._string(node, path)
        return None if name is None else frozenset((name,))

    def _where(self, node: Node, owner: ScalarNode, path: str) -> tuple[Condition, ...] | None:
        expected = "a map from path to condition such as {properties.price: {gte: 100}}"
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            self.err(owner, path, f"expected {expected}, got nothing")
            return None
        entries = self._entries(node, path, expected)
        if entries is None:
            return None
        conditions: list[Condition | None] = []
        for key_node, key, value_node in entries:
            conditions.append(self._condition(key_node, key, value_node, f"{path}[{key!r}]"))
        return _complete(conditions)

    def _condition(self, key_node: ScalarNode, key: str, node: Node, path: str) -> Condition | None:
        parts = tuple(key.split("."))
        path_ok = all(parts)
        if not path_ok:
            self.err(
                key_node,
                path,
                f"path {key!r} has an empty part; write keys joined by single dots, such as properties.price",
            )
        if not isinstance(node, MappingNode):
            value = self._json(node, path)
            return Condition(parts, "eq", value) if path_ok and value is not _INVALID else None
        entries = self._entries(node, path, "an operator map such as {gte: 100}")
        if entries is None:
            return None
        if len(entries) != 1:
            ops = ", ".join(k for _, k, _ in entries) or "none"
            self.err(node, path, f"expected exactly one operator such as {{gte: 100}}, got {len(entries)} ({ops})")
            return None
        op_node, op, value_node = entries[0]
        if op not in _OPERATORS:
            self.err(
                op_node,
                path,
                _unknown(op, _OPERATORS, "operator") + "; to compare with an object, write {eq: {...}}",
            )
            return None
        value = self._operand(op, value_node, f"{path}.{op}")
        if not path_ok or value is _INVALID:
            return None
        return Condition(parts, op, value)  # type: ignore[arg-type]

    def _operand(self, op: str, node: Node, path: str) -> Any:
        value = self._json(node, path)
        if value is _INVALID:
            return _INVALID
        if op in ("in", "not_in"):
            ok, expected = isinstance(value, tuple), "a list such as [a, b]"
        elif op in ("gt", "gte", "lt", "lte"):
            ok = isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))
            expected = "a number or a string"
        elif op == "startswith":
            ok, expected = isinstance(value, str), "a string"
        elif op == "exists":
            ok, expected = isinstance(value, bool), "true or false"
        else:
            ok, expected = True, ""
        if not ok:
            self.err(node, path, f"{op!r} needs {expected}, got {_show(node)}")
            return _INVALID
        return value

    # -- the whole set -----------------------------------------------------------

    def check_references(self) -> None:
        if self.incomplete:
            return
        defined = ", ".join(self.score_origins) or "none"
        for score, file, line, path in self.score_refs:
            if score not in self.score_origins:
                close = difflib.get_close_matches(score, list(self.score_origins), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problems.append((file, line, f"{path}: undefined score {score!r}{hint}; defined scores: {defined}"))
        timed = [t for t in self.triggers if isinstance(t.when, (Sequence, FallsBelow))]
        if len(timed) > MAX_TIMER_TRIGGERS:
            extra = timed[MAX_TIMER_TRIGGERS]
            self.problems.append((extra.origin.file, extra.origin.line, (
                f"triggers.{extra.name}: more than {MAX_TIMER_TRIGGERS} triggers need a timer (first/then_not, "
                f"inactive_for, falls_below; {len(timed)} here); split the rules over several engines")))


def _complete(items: list[_T | None]) -> tuple[_T, ...] | None:
    """All items, or None if any is missing (its problem is already reported)."""
    present = tuple(item for item in items if item is not None)
    return present if len(present) == len(items) else None


def _mark_line(error: yaml.MarkedYAMLError) -> int:
    mark = error.problem_mark or error.context_mark
    return 1 if mark is None else mark.line + 1


def _rule_files(path: str, problems: list[Problem]) -> list[str]:
    """The file itself, or a directory's `*.yaml`/`*.yml` files sorted by name.

    Hidden files are skipped: editors leave lock and backup files such as `.#rules.yaml`.
    """
    if not os.path.isdir(path):
        return [path]
    try:
        names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
    except OSError as e:
        problems.append((path, 0, f"cannot read rules: {e.strerror or e}"))
        return []
    if not names:
        problems.append((path, 0, "no rule files in this directory; add a *.yaml or *.yml file"))
    return [os.path.join(path, n) for n in names]


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """The validated rule set in a YAML file or a directory of them.

    Files of a directory are read in name order and merged: their scores and triggers
    are pooled (a name may be defined once), `version: 1` is required in each, and
    `lateness` may be set in several only if they agree.

    Raises RuleError listing every problem as (file, line, message).
    """
    root = os.fspath(path)
    problems: list[Problem] = []
    files = _rule_files(root, problems)
    builder = _Builder()
    for file in files:
        builder.load_file(file)
    builder.check_references()
    problems.extend(builder.problems)
    if problems:
        order = {file: i for i, file in enumerate(files)}
        problems.sort(key=lambda p: (order.get(p[0], -1), p[1]))
        raise RuleError(problems)
    return RuleSet(
        lateness_ms=0 if builder.lateness is None else builder.lateness[0],
        scores=tuple(builder.scores),
        triggers=tuple(builder.triggers),
        sources=tuple(builder.sources),
    )


def check_rules(path: str | os.PathLike[str]) -> list[str]:
    """Every problem in the rules at `path` as `file:line: message`; empty when valid."""
    try:
        load_rules(path)
    except RuleError as e:
        return e.lines
    return []

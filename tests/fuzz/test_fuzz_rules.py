"""Hostile rule files: the loader answers a RuleSet or a RuleError whose every line is `file:line: message`.

tests/rules/test_loader.py mangles the SPEC example a few characters at a time and lists hostile
texts one by one; here random YAML-ish text and random bytes, structured mutations of the SPEC
example that the SPEC says are errors (each must be refused), non-UTF-8 bytes anywhere (refused at
their exact line), and `halflife rules check` as a subprocess on hostile files (exit 2, no traceback).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile import fuzz
from hypothesis import given
from hypothesis import strategies as st

from engine.testing import run_rules
from rules import RuleError, RuleSet, load_rules
from tests.rules.rulefiles import LINE, SPEC_EXAMPLE, outcome, write

ROOT = Path(__file__).resolve().parents[2]

SPEC = yaml.safe_load(SPEC_EXAMPLE)


# --- random text and bytes ---------------------------------------------------------------------------------

_VOCABULARY = ["version", "lateness", "scores", "triggers", "half_life", "min", "max", "points", "event", "where",
               "add", "when", "unless", "cooldown", "actions", "score", "rises_above", "falls_below", "count",
               "within", "at_least", "first", "then_not", "inactive_for", "activity", "emit", "tag", "untag",
               "stage", "engagement", "startswith", "in", "exists", "1", "0", "-1", "5m", "-5m", "0s", "7d",
               "1e400", ".inf", ".nan", "~", "null", "yes", "no", "&a", "*a", "<<", "!!python/object:os.system",
               "!!binary", "!!set", "!!omap", "%YAML 1.1", "---", "...", "|", ">", "'", '"', "\\u0000", "\t",
               str(2**70), "9" * 30, "\u202e", "\ufeff", "\x85", "\u2028"]
yamlish = st.lists(st.one_of(st.sampled_from(_VOCABULARY), st.sampled_from(list(":{}[],-#?&*!|>'\" \n\n\n  ")),
                             st.text(max_size=4)), max_size=60).map("".join)


@fuzz()
@given(yamlish)
def test_random_yamlish_text(text: str) -> None:
    outcome(text.encode("utf-8", "surrogatepass"))


@fuzz()
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    outcome(data)


@fuzz()
@given(st.integers(0, len(SPEC_EXAMPLE)), st.sampled_from([b"\xff", b"\xfe", b"\xc0", b"\x80", b"\xed\xa0\x80",
                                                          b"\xf8\x88\x80\x80\x80", b"\xc3"]))
def test_non_utf8_anywhere_is_refused_at_its_line(position: int, bad: bytes) -> None:
    data = SPEC_EXAMPLE.encode()
    error = outcome(data[:position] + bad + data[position:])
    assert isinstance(error, RuleError)
    [(_, line, message)] = error.problems
    assert line == data[:position].count(b"\n") + 1
    assert message.startswith("file is not UTF-8")


# --- structured mutations of the SPEC example ----------------------------------------------------------------

_DURATIONS = ["-5m", "5x", "1.5h", "5", 5, "", None, [], {}, "99999999999999999999999d", "1e3s", "5 m", "٥m", True]
_NUMBER_FIELDS = ("add", "min", "max", "rises_above", "falls_below", "at_least")
_DURATION_FIELDS = ("half_life", "within", "cooldown", "inactive_for", "lateness")


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*path, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def invalid_mutation(draw: st.DrawFn) -> tuple[str, Any]:
    """(what, rules): the SPEC example with one change that SPEC §3 says is an error."""
    rules = copy.deepcopy(SPEC)
    paths = _paths(rules)
    kind = draw(st.sampled_from(["unknown_key", "duration", "zero_duration", "number", "falls_below", "clamp",
                                 "score_ref", "actions", "when", "version", "deep", "wrong_type"]))
    if kind == "unknown_key":
        maps = [p for p in paths if isinstance(_get(rules, p), dict) and (not p or p[-1] not in ("scores", "triggers"))
                and "where" not in p]  # a `where` maps any path to a condition
        target = _get(rules, draw(st.sampled_from(maps)))
        target[draw(st.sampled_from(["bogus", "Version", "half-life", "actoins", "when ", "__proto__"]))] = 1
    elif kind in ("duration", "zero_duration"):
        spots = [p for p in paths if p and p[-1] in _DURATION_FIELDS and isinstance(_get(rules, p), str)]
        spot = draw(st.sampled_from([p for p in spots if p != ("lateness",)] if kind == "zero_duration" else spots))
        _get(rules, spot[:-1])[spot[-1]] = "0s" if kind == "zero_duration" else draw(st.sampled_from(_DURATIONS))
    elif kind == "number":
        spots = [p for p in paths if p and p[-1] in _NUMBER_FIELDS]
        spot = draw(st.sampled_from(spots))
        _get(rules, spot[:-1])[spot[-1]] = draw(st.sampled_from([float("inf"), float("-inf"), float("nan"), "ten",
                                                                 [1], {"a": 1}, True, None, "1e400"]))
    elif kind == "falls_below":
        rules["triggers"]["cooling_off"]["when"]["falls_below"] = draw(st.sampled_from([0, -1, -0.5, 0.0, -1e300]))
    elif kind == "clamp":
        bound = draw(st.sampled_from(["min", "max"]))
        rules["scores"]["engagement"][bound] = draw(st.floats(1e-9, 1e300)) * (1 if bound == "min" else -1)
    elif kind == "score_ref":
        trigger = draw(st.sampled_from(["hot_lead", "cooling_off"]))
        rules["triggers"][trigger]["when"]["score"] = draw(st.sampled_from(["Engagement", "nope", "engagement ",
                                                                            "", "scores"]))
    elif kind == "actions":
        rules["triggers"][draw(st.sampled_from(list(rules["triggers"])))]["actions"] = draw(st.sampled_from(
            [[], [{}], [{"emit": None}], [{"emit": ""}], [{"bogus": "x"}], [{"emit": "a", "tag": "b"}], "emit", {}]))
    elif kind == "when":
        trigger = rules["triggers"][draw(st.sampled_from(list(rules["triggers"])))]
        trigger["when"] = draw(st.sampled_from([{}, None, [], "score", {"inactive_for": "1d", "score": "engagement"},
                                                {"count": {"event": "x"}, "within": "1h"}]))
    elif kind == "version":
        rules["version"] = draw(st.sampled_from([2, 0, "1", 1.0, None, [1], True]))
    elif kind == "deep":
        value: Any = 1
        for _ in range(draw(st.integers(40, 200))):
            value = [value]
        spot = draw(st.sampled_from([p for p in paths if p and isinstance(p[-1], str)]))
        _get(rules, spot[:-1])[spot[-1]] = value
    else:  # a section or a definition of the wrong type
        spot = draw(st.sampled_from([("scores",), ("triggers",), ("scores", "engagement"), ("triggers", "hot_lead"),
                                     ("scores", "engagement", "points"), ("triggers", "hot_lead", "unless")]))
        _get(rules, spot[:-1])[spot[-1]] = draw(st.sampled_from([1, "x", [1, 2], True, 1.5]))
    return kind, rules


def _dump(rules: Any) -> bytes:
    return yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, width=1 << 30).encode()


@fuzz()
@given(invalid_mutation())
def test_invalid_mutations_of_the_spec_example_are_refused(mutation: tuple[str, Any]) -> None:
    _, rules = mutation
    assert isinstance(outcome(_dump(rules)), RuleError)


@fuzz()
@given(st.sampled_from(["hot_lead", "pricing_binge", "cart_abandoned", "cooling_off", "gone_quiet"]),
       st.sampled_from(["the same file", "another file"]))
def test_duplicate_trigger_ids_are_refused(name: str, where: str) -> None:
    block = "  " + name + ":\n    when: {inactive_for: 1d}\n"
    if where == "the same file":
        error = outcome((SPEC_EXAMPLE + block).encode())
        assert isinstance(error, RuleError)
        assert any(f"duplicate key '{name}'" in message for _, _, message in error.problems)
        return
    with tempfile.TemporaryDirectory(prefix="halflife-fuzz-") as directory:
        write(Path(directory), SPEC_EXAMPLE, "a.yaml")
        write(Path(directory), "version: 1\ntriggers:\n" + block, "b.yaml")
        with pytest.raises(RuleError) as info:
            load_rules(directory)
        assert any(f"trigger '{name}' is already defined" in message for _, _, message in info.value.problems)
        assert all(LINE.match(line) for line in info.value.lines)


_RULE_WORDS = st.sampled_from(["when", "score", "rises_above", "falls_below", "points", "add", "event", "half_life",
                               "within", "count", "at_least", "actions", "emit", "x"]) | st.text(max_size=4)


@fuzz()
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=8),
                              st.sampled_from(["5m", "0s", "-1d", "engagement", "Page Viewed", "emit"])),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_RULE_WORDS, inner, max_size=4),
                    max_leaves=25),
       st.sampled_from([("scores", "engagement"), ("triggers", "hot_lead"), ("triggers", "hot_lead", "when"),
                        ("scores", "engagement", "points", 0), ("triggers", "pricing_binge", "when", "count")]))
def test_random_values_anywhere(value: Any, spot: tuple[Any, ...]) -> None:
    rules = copy.deepcopy(SPEC)
    _get(rules, spot[:-1])[spot[-1]] = value
    outcome(_dump(rules))


@pytest.mark.parametrize("text", [
    # YAML anchor / alias bombs and merge keys
    "version: 1\na: &a [1,2,3,4,5,6,7,8,9]\n" + "".join(f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
                                                      for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
    "version: 1\nscores:\n  s: &s {half_life: 1h, points: [{add: 1}]}\n  t: {<<: *s}\n",
    "version: 1\nlateness: &x 1m\ntriggers: {t: {when: {inactive_for: *x}}}\n",
    "version: 1\nx: &x [*x]\n",
    # deep nesting, both flow and block style
    "version: 1\nx: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "version: 1\nx: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
    "version: 1\nx:\n" + "".join("  " * i + "- \n" for i in range(1, 200)),
    # huge numbers
    "version: 1\nscores: {s: {half_life: 1h, points: [{add: 1e400}]}}\n",
    "version: 1\nscores: {s: {half_life: 1h, points: [{add: .inf}]}}\n",
    "version: 1\nscores: {s: {half_life: 1h, points: [{add: .nan}]}}\n",
    "version: 1\nscores: {s: {half_life: 1h, points: [{add: 1}]}}\ntriggers: {t: {when: {score: s, rises_above: "
    + "9" * 5000 + "}}}\n",
    "version: 1\nlateness: " + "9" * 5000 + "d\n",
    "version: " + "1" * 5000 + "\n",
    # negative and zero where they are refused
    "version: 1\nscores: {s: {half_life: -1h, points: [{add: 1}]}}\n",
    "version: 1\nscores: {s: {half_life: 1h, points: [{add: 1}]}}\ntriggers: {t: {when: {score: s, falls_below: 0}}}\n",
    "version: 1\ntriggers: {t: {when: {count: {event: x}, within: 0s, at_least: 1}}}\n",
    # Python tags
    "version: 1\nx: !!python/object/apply:os.system ['echo pwned']\n",
    "!!python/object/new:os.system [echo pwned]\n",
])
def test_hostile_rule_files_through_the_loader(text: str) -> None:
    assert isinstance(outcome(text.encode()), RuleError)


def _check_cli(path: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([sys.executable, "-m", "engine", "rules", "check", path], capture_output=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 2, done
    assert b"Traceback" not in done.stderr and done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    return done


def test_rules_check_cli_on_hostile_files(tmp_path: Path) -> None:
    files = {
        "bomb.yaml": "version: 1\na: &a [1,2,3,4,5,6,7,8,9]\n" + "".join(
            f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
        "deep.yaml": "version: 1\nx: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "huge.yaml": "version: 1\nscores: {s: {half_life: 1h, points: [{add: 1e400}]}}\n",
        "negative.yaml": "version: 1\ntriggers: {t: {when: {inactive_for: -1d}, cooldown: 0s}}\n",
        "python.yaml": "version: 1\nx: !!python/object/apply:os.system ['echo pwned']\n",
        "dupes.yaml": SPEC_EXAMPLE + "  hot_lead:\n    when: {inactive_for: 1d}\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        _check_cli(str(tmp_path / name))
    (tmp_path / "binary.yaml").write_bytes(b"version: 1\n\xff\xfe\x00garbage\n")
    _check_cli(str(tmp_path / "binary.yaml"))
    _check_cli(str(tmp_path))  # the directory: every file's problems
    _check_cli("/dev/zero")  # endless input: refused after MAX_FILE_BYTES
    (tmp_path / "empty").mkdir()
    _check_cli(str(tmp_path / "empty"))
    # `halflife run` refuses them the same way, before starting anything.
    done = subprocess.run([sys.executable, "-m", "engine", "run", "--rules", str(tmp_path / "bomb.yaml"), "--input",
                           str(tmp_path / "deep.yaml")], capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and b"Traceback" not in done.stderr


# --- rules that load but overflow at run time ----------------------------------------------------------------


def test_scores_that_overflow_do_not_stop_the_engine() -> None:
    rules = """
version: 1
scores:
  s:
    half_life: 1d
    points:
      - {event: A, add: 1.0e+308}
      - {event: A, add: 1.0e+308}
triggers:
  down:
    when: {score: s, falls_below: 1}
"""
    load_rules_text = outcome(rules.encode())
    assert isinstance(load_rules_text, RuleSet)  # accepted...
    result = run_rules(rules, [{"event": "A", "userId": "u", "timestamp": 1_795_442_400_000}])  # ...and must run
    assert result.summary["processed"] == 1

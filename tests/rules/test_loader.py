import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import (
    Action,
    Condition,
    CountWithin,
    FallsBelow,
    MatcherSpec,
    Origin,
    PointsSpec,
    RisesAbove,
    RuleError,
    RuleSet,
    ScoreSpec,
    Sequence,
    TriggerSpec,
    Unless,
    check_rules,
    load_rules,
)
from rules.loader import MAX_DEPTH, MAX_FILE_BYTES
from tests.rules.rulefiles import SPEC_EXAMPLE, outcome, problems, write

EXAMPLES = Path(__file__).resolve().parents[2] / "rules" / "examples"

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def test_spec_example_loads_to_the_exact_model(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    pricing = MatcherSpec(frozenset({"Page Viewed"}), (Condition(("properties", "path"), "startswith", "/pricing"),))
    assert load_rules(path) == RuleSet(
        lateness_ms=5 * MINUTE,
        scores=(
            ScoreSpec(
                name="engagement",
                half_life_ms=7 * DAY,
                min=0.0,
                max=100.0,
                points=(
                    PointsSpec(pricing, 3.0),
                    PointsSpec(MatcherSpec(frozenset({"Email Opened"})), 2.0),
                    PointsSpec(MatcherSpec(frozenset({"Unsubscribed"})), -20.0),
                ),
                origin=Origin(path, 4),
            ),
        ),
        triggers=(
            TriggerSpec(
                name="hot_lead",
                when=RisesAbove("engagement", 10.0),
                unless=Unless(MatcherSpec(frozenset({"Order Completed"})), 30 * DAY),
                cooldown_ms=DAY,
                actions=(Action("emit", "sales_alerts"), Action("tag", "hot")),
                origin=Origin(path, 13),
            ),
            TriggerSpec(
                name="pricing_binge",
                when=CountWithin(pricing, HOUR, 3),
                unless=None,
                cooldown_ms=0,
                actions=(Action("emit", "sales_alerts"),),
                origin=Origin(path, 18),
            ),
            TriggerSpec(
                name="cart_abandoned",
                when=Sequence(
                    MatcherSpec(frozenset({"Product Added"})),
                    MatcherSpec(frozenset({"Order Completed"})),
                    30 * MINUTE,
                ),
                unless=None,
                cooldown_ms=DAY,
                actions=(Action("emit", "email"),),
                origin=Origin(path, 22),
            ),
            TriggerSpec(
                name="cooling_off",
                when=FallsBelow("engagement", 2.0),
                unless=None,
                cooldown_ms=0,
                actions=(Action("untag", "hot"),),
                origin=Origin(path, 26),
            ),
            TriggerSpec(
                name="gone_quiet",
                when=Sequence(MatcherSpec(None), MatcherSpec(None), 30 * DAY),
                unless=None,
                cooldown_ms=0,
                actions=(Action("emit", "email"), Action("stage", "dormant")),
                origin=Origin(path, 29),
            ),
        ),
        sources=(path,),
    )
    assert check_rules(path) == []


def test_defaults_and_literal_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        scores:
          s:
            half_life: 90s
            points:
              - {where: {name: Pricing, properties.n: 2, properties.tags: [a, 1], properties.day: 2026-11-23,
                         properties.none: null, properties.obj: {eq: {a: [1, true]}}}, add: 0.5}
        triggers:
          quiet:
            when: {inactive_for: 1h, activity: {event: [Page Viewed, Product Viewed, Page Viewed]}}
          browse:
            when: {first: {}, then_not: {event: X, where: {context.page.path: {in: [/a, 2]}}}, within: 1ms}
        """,
    )
    rules = load_rules(path)
    assert rules.lateness_ms == 0
    (score,) = rules.scores
    assert (score.min, score.max, score.half_life_ms) == (None, None, 90_000)
    assert score.points == (
        PointsSpec(
            MatcherSpec(
                None,
                (
                    Condition(("name",), "eq", "Pricing"),
                    Condition(("properties", "n"), "eq", 2),
                    Condition(("properties", "tags"), "eq", ("a", 1)),
                    Condition(("properties", "day"), "eq", "2026-11-23"),
                    Condition(("properties", "none"), "eq", None),
                    Condition(("properties", "obj"), "eq", {"a": (1, True)}),
                ),
            ),
            0.5,
        ),
    )
    quiet, browse = rules.triggers
    page_or_product = MatcherSpec(frozenset({"Page Viewed", "Product Viewed"}))
    assert quiet == TriggerSpec("quiet", Sequence(page_or_product, page_or_product, HOUR), None, 0, (), Origin(path, 9))
    assert quiet.channels == ("triggers",)
    assert browse.when == Sequence(
        MatcherSpec(None),
        MatcherSpec(frozenset({"X"}), (Condition(("context", "page", "path"), "in", ("/a", 2)),)),
        1,
    )


def test_plain_keys_are_names_whatever_yaml_reads_them_as(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        scores:
          1: {half_life: 1h, points: [{where: {properties.on: 1, 2024-01-01: x}, add: 1}]}
        triggers:
          yes: {when: {score: "1", rises_above: 1}}
          1.5: {when: {inactive_for: 1h}}
        """,
    )
    rules = load_rules(path)
    assert [s.name for s in rules.scores] == ["1"]
    assert rules.scores[0].points[0].matcher.where == (
        Condition(("properties", "on"), "eq", 1),
        Condition(("2024-01-01",), "eq", "x"),
    )
    assert [t.name for t in rules.triggers] == ["yes", "1.5"]


def test_lateness_may_be_zero(tmp_path: Path) -> None:
    assert load_rules(write(tmp_path, "version: 1\nlateness: 0s\n")).lateness_ms == 0


def test_rule_error_lists_one_problem_per_line() -> None:
    error = RuleError([("a.yaml", 3, "first"), ("b.yaml", 0, "second")])
    assert str(error) == "a.yaml:3: first\nb.yaml:0: second"
    assert error.lines == ["a.yaml:3: first", "b.yaml:0: second"]
    assert isinstance(error, Exception)


HEADER = "version: 1\n"
TOP_KEYS = "allowed keys: version, lateness, scores, triggers"
OPERATORS = "eq, ne, in, not_in, gt, gte, lt, lte, startswith, contains, exists"
HINT = "write an integer and a unit (ms, s, m, h or d), such as '90s', '30m' or '7d'"
SCORE = "scores:\n  s:\n    half_life: 1h\n    points: [{add: 1}]\n"  # lines 2-5 after HEADER


def trigger(body: str) -> str:
    """A file whose trigger `t` starts on line 7 and whose `when` is on line 8."""
    return HEADER + SCORE + "triggers:\n  t:\n" + textwrap.indent(textwrap.dedent(body), "    ")


ERRORS: list[tuple[str, str, list[tuple[int, str]]]] = [
    # top level
    (
        "unknown top-level key",
        HEADER + "trigers: {}\n",
        [(2, f"top level: unknown key 'trigers' (did you mean 'triggers'?); {TOP_KEYS}")],
    ),
    (
        "missing version",
        "\n# rules\nscores: {}\n",
        [(3, "top level: missing 'version'; add it, e.g. 'version: 1' as the first line")],
    ),
    ("version 2", "version: 2\n", [(1, "version: unsupported version 2; this halflife reads version: 1")]),
    (
        "version string",
        "version: '1'\n",
        [(1, "version: unsupported version '1'; this halflife reads version: 1")],
    ),
    (
        "version float",
        "version: 1.0\n",
        [(1, "version: unsupported version 1.0; this halflife reads version: 1")],
    ),
    (
        "lateness without unit",
        HEADER + "lateness: 5\n",
        [(2, f"lateness: invalid duration 5: a duration needs a unit; {HINT}")],
    ),
    (
        "negative lateness",
        HEADER + "lateness: -5m\n",
        [(2, "lateness: invalid duration '-5m': durations cannot be negative")],
    ),
    (
        "scores not a map",
        HEADER + "scores: [engagement]\n",
        [(2, "scores: expected a map from score name to its definition, got a list")],
    ),
    (
        "duplicate key",
        HEADER + "scores:\n  s: {half_life: 1h, points: [{add: 1}]}\n  s: {half_life: 2h, points: [{add: 1}]}\n",
        [(4, "scores: duplicate key 's' (first on line 3); each key may appear once")],
    ),
    (
        "null and empty keys",
        HEADER + "scores:\n  ~: {half_life: 1h, points: [{add: 1}]}\n  '': {half_life: 1h, points: [{add: 1}]}\n",
        [(3, "scores: keys must be strings, got null"), (4, "scores: keys must not be empty")],
    ),
    (
        "non-string key",
        HEADER + "? [a]\n: 1\n",
        [(2, "top level: keys must be strings, got a list")],
    ),
    # scores
    (
        "unknown score key",
        HEADER + "scores:\n  s:\n    half_life: 1h\n    halflife: 2h\n    points: [{add: 1}]\n",
        [
            (
                5,
                "scores.s: unknown key 'halflife' (did you mean 'half_life'?); allowed keys: half_life, min, max, points",
            )
        ],
    ),
    (
        "missing half_life and points",
        HEADER + "scores:\n  s:\n    min: 0\n",
        [
            (3, "scores.s: missing 'half_life'; add it, e.g. half_life: 7d"),
            (3, "scores.s: missing 'points'; add it, e.g. points: [{event: Page Viewed, add: 1}]"),
        ],
    ),
    (
        "empty score",
        HEADER + "scores:\n  s:\n",
        [(3, "scores.s: expected a map with half_life and points, got nothing")],
    ),
    (
        "bad half_life",
        HEADER + "scores:\n  s:\n    half_life: 7 days\n    points: [{add: 1}]\n",
        [(4, f"scores.s.half_life: invalid duration '7 days': {HINT}")],
    ),
    (
        "zero half_life",
        HEADER + "scores:\n  s:\n    half_life: 0d\n    points: [{add: 1}]\n",
        [(4, "scores.s.half_life: duration must be greater than 0, got '0d'")],
    ),
    (
        "clamps exclude zero",
        HEADER + "scores:\n  s:\n    half_life: 1h\n    min: 0.5\n    max: -1\n    points: [{add: 1}]\n",
        [
            (5, "scores.s.min: must be <= 0 (scores start at 0 and decay towards 0), got 0.5"),
            (6, "scores.s.max: must be >= 0 (scores start at 0 and decay towards 0), got -1"),
        ],
    ),
    (
        "clamp not a number",
        HEADER + "scores:\n  s:\n    half_life: 1h\n    max: high\n    min: false\n    points: [{add: 1}]\n",
        [
            (5, "scores.s.max: expected a number, got 'high'"),
            (6, "scores.s.min: expected a number, got False"),
        ],
    ),
    (
        "empty points",
        HEADER + "scores:\n  s:\n    half_life: 1h\n    points: []\n",
        [(5, "scores.s.points: expected a non-empty list such as [{event: Page Viewed, add: 1}], got []")],
    ),
    (
        "bad points entries",
        HEADER
        + "scores:\n  s:\n    half_life: 1h\n    points:\n"
        + "      - {event: A}\n      - {event: A, add: yes}\n      - {event: A, add: .nan}\n"
        + "      - {event: A, add: 1e400}\n      - {event: A, ad: 1}\n      - A\n",
        [
            (6, "scores.s.points[0]: missing 'add'; add it, e.g. add: 1"),
            (7, "scores.s.points[1].add: expected a number, got True"),
            (8, "scores.s.points[2].add: expected a finite number, got nan"),
            (9, "scores.s.points[3].add: expected a number, got '1e400'"),
            (
                10,
                "scores.s.points[4]: unknown key 'ad' (did you mean 'add'?); allowed keys: event, where, add",
            ),
            (10, "scores.s.points[4]: missing 'add'; add it, e.g. add: 1"),
            (11, "scores.s.points[5]: expected a map such as {event: Page Viewed, add: 1}, got 'A'"),
        ],
    ),
    # matchers
    (
        "bad event names",
        HEADER
        + "scores:\n  s:\n    half_life: 1h\n    points:\n"
        + "      - {event: [], add: 1}\n"
        + "      - {event: [A, 404, ''], add: 1}\n"
        + "      - {event: {a: 1}, add: 1}\n",
        [
            (
                6,
                "scores.s.points[0].event: expected an event name or a non-empty list of names, got []; "
                "leave event out to match every event",
            ),
            (7, "scores.s.points[1].event[1]: expected a string, got 404; to mean the text '404', quote it"),
            (7, "scores.s.points[1].event[2]: expected a non-empty string, got ''"),
            (8, "scores.s.points[2].event: expected a string, got a map"),
        ],
    ),
    (
        "bad where",
        HEADER
        + "scores:\n  s:\n    half_life: 1h\n    points:\n      - event: A\n        add: 1\n        where:\n"
        + "          properties..x: 1\n"
        + "          a: {startwith: /p}\n"
        + "          b: {gte: 1, lt: 2}\n"
        + "          c: {}\n"
        + "          d: {in: x}\n"
        + "          e: {gt: true}\n"
        + "          f: {startswith: 1}\n"
        + "          g: {exists: 'yes'}\n"
        + "          h: .inf\n"
        + "          i: {eq: [1, {k: .nan}]}\n"
        + "          j: {lt: [1]}\n",
        [
            (
                9,
                "scores.s.points[0].where['properties..x']: path 'properties..x' has an empty part; "
                "write keys joined by single dots, such as properties.price",
            ),
            (
                10,
                "scores.s.points[0].where['a']: unknown operator 'startwith' (did you mean 'startswith'?); "
                f"allowed operators: {OPERATORS}; to compare with an object, write {{eq: {{...}}}}",
            ),
            (
                11,
                "scores.s.points[0].where['b']: expected exactly one operator such as {gte: 100}, got 2 (gte, lt)",
            ),
            (
                12,
                "scores.s.points[0].where['c']: expected exactly one operator such as {gte: 100}, got 0 (none)",
            ),
            (13, "scores.s.points[0].where['d'].in: 'in' needs a list such as [a, b], got 'x'"),
            (14, "scores.s.points[0].where['e'].gt: 'gt' needs a number or a string, got True"),
            (15, "scores.s.points[0].where['f'].startswith: 'startswith' needs a string, got 1"),
            (16, "scores.s.points[0].where['g'].exists: 'exists' needs true or false, got 'yes'"),
            (17, "scores.s.points[0].where['h']: inf is not a JSON number; use a finite number"),
            (18, "scores.s.points[0].where['i'].eq[1].k: nan is not a JSON number; use a finite number"),
            (19, "scores.s.points[0].where['j'].lt: 'lt' needs a number or a string, got a list"),
        ],
    ),
    (
        "empty where",
        HEADER + "scores:\n  s:\n    half_life: 1h\n    points:\n      - {where: , add: 1}\n",
        [
            (
                6,
                "scores.s.points[0].where: expected a map from path to condition such as "
                "{properties.price: {gte: 100}}, got nothing",
            )
        ],
    ),
    # triggers
    (
        "unknown trigger key",
        trigger("when: {inactive_for: 1h}\ncooldwn: 1d\n"),
        [
            (
                9,
                "triggers.t: unknown key 'cooldwn' (did you mean 'cooldown'?); allowed keys: when, unless, cooldown, actions",
            )
        ],
    ),
    (
        "missing when",
        trigger("actions: [{emit: a}]\n"),
        [(7, "triggers.t: missing 'when'; add it, e.g. when: {score: engagement, rises_above: 10}")],
    ),
    (
        "empty trigger",
        HEADER + "triggers:\n  t:\n",
        [(3, "triggers.t: expected a map with when and actions, got nothing")],
    ),
    (
        "no condition",
        trigger("when: {}\n"),
        [(8, "triggers.t.when: no condition; use exactly one of score, count, first, inactive_for")],
    ),
    (
        "misspelt condition",
        trigger("when: {scor: s, rises_above: 1}\n"),
        [
            (
                8,
                "triggers.t.when: unknown key 'scor' (did you mean 'score'?); allowed keys: score, "
                "rises_above, falls_below, count, within, at_least, first, then_not, inactive_for, activity",
            )
        ],
    ),
    (
        "two conditions",
        trigger("when:\n  score: s\n  rises_above: 1\n  inactive_for: 1h\n"),
        [
            (
                11,
                "triggers.t.when: 2 conditions (score, inactive_for); a trigger has exactly one, "
                "so split it into several triggers",
            )
        ],
    ),
    (
        "key of another condition",
        trigger("when: {score: s, rises_above: 1, within: 1h}\n"),
        [
            (
                8,
                "triggers.t.when: 'within' belongs to a count or first condition, not to a score condition; "
                "allowed keys here: score, rises_above, falls_below",
            )
        ],
    ),
    (
        "score edges",
        HEADER
        + SCORE
        + "triggers:\n  a:\n    when: {score: s}\n"
        + "  b:\n    when: {score: s, rises_above: 1, falls_below: 1}\n"
        + "  c:\n    when: {score: s, rises_above: ten}\n  d:\n    when: {score: s, falls_below: 0}\n"
        + "  e:\n    when: {score: s, falls_below: -1.5}\n",
        [
            (
                8,
                "triggers.a.when: a score condition needs exactly one of rises_above and falls_below; "
                "got neither rises_above nor falls_below",
            ),
            (
                10,
                "triggers.b.when: a score condition needs exactly one of rises_above and falls_below; "
                "got both rises_above and falls_below",
            ),
            (12, "triggers.c.when.rises_above: expected a number, got 'ten'"),
            (
                14,
                "triggers.d.when.falls_below: must be greater than 0 (a score decays towards 0 without reaching it), got 0",
            ),
            (
                16,
                "triggers.e.when.falls_below: must be greater than 0 (a score decays towards 0 without reaching it), got -1.5",
            ),
        ],
    ),
    (
        "undefined score",
        trigger("when: {score: engagment, falls_below: 1}\n"),
        [(8, "triggers.t.when.score: undefined score 'engagment'; defined scores: s")],
    ),
    (
        "undefined score with a close name",
        HEADER
        + "scores:\n  engagement: {half_life: 1h, points: [{add: 1}]}\n"
        + "triggers:\n  t: {when: {score: engagment, rises_above: 1}}\n",
        [
            (
                5,
                "triggers.t.when.score: undefined score 'engagment' (did you mean 'engagement'?); defined scores: engagement",
            )
        ],
    ),
    (
        "count problems",
        trigger("when: {count: {evnt: A}, within: 0s, at_least: 0}\n"),
        [
            (
                8,
                "triggers.t.when.count: unknown key 'evnt' (did you mean 'event'?); allowed keys: event, where",
            ),
            (8, "triggers.t.when.within: duration must be greater than 0, got '0s'"),
            (8, "triggers.t.when.at_least: expected a whole number from 1 to 1000, got 0"),
        ],
    ),
    (
        "count too large",
        trigger("when: {count: {}, within: 1d, at_least: 1001}\n"),
        [(8, "triggers.t.when.at_least: expected a whole number from 1 to 1000, got 1001")],
    ),
    (
        "count without window",
        trigger("when:\n  count: {event: A}\n  at_least: true\n"),
        [
            (8, "triggers.t.when: missing 'within'; add it, e.g. within: 1h"),
            (10, "triggers.t.when.at_least: expected a whole number from 1 to 1000, got True"),
        ],
    ),
    (
        "sequence problems",
        trigger("when: {first: A, within: 30}\n"),
        [
            (8, "triggers.t.when.first: expected a matcher such as {event: Product Added}, got 'A'"),
            (8, "triggers.t.when: missing 'then_not'; add it, e.g. then_not: {event: Order Completed}"),
            (8, f"triggers.t.when.within: invalid duration 30: a duration needs a unit; {HINT}"),
        ],
    ),
    (
        "inactivity problems",
        trigger("when: {inactive_for: 1.5h, activity: }\n"),
        [
            (
                8,
                "triggers.t.when.inactive_for: invalid duration '1.5h': use a whole number of a smaller unit "
                "(e.g. '90m', not '1.5h')",
            ),
            (8, "triggers.t.when.activity: expected a matcher such as {event: Product Added}, got nothing"),
        ],
    ),
    (
        "unless problems",
        trigger("when: {inactive_for: 1h}\nunless: {event: Order Completed, within: 0ms, for: 1d}\n"),
        [
            (9, "triggers.t.unless: unknown key 'for'; allowed keys: event, where, within"),
            (9, "triggers.t.unless.within: duration must be greater than 0, got '0ms'"),
        ],
    ),
    (
        "unless without window",
        trigger("when: {inactive_for: 1h}\nunless: {event: Order Completed}\n"),
        [(9, "triggers.t.unless: missing 'within'; add it, e.g. within: 30d")],
    ),
    (
        "zero cooldown",
        trigger("when: {inactive_for: 1h}\ncooldown: 0s\n"),
        [(9, "triggers.t.cooldown: duration must be greater than 0, got '0s'")],
    ),
    (
        "empty actions",
        trigger("when: {inactive_for: 1h}\nactions: []\n"),
        [
            (
                9,
                "triggers.t.actions: expected a non-empty list of actions such as [{emit: email}], got []; "
                "leave actions out to emit to the 'triggers' channel",
            )
        ],
    ),
    (
        "null actions",
        trigger("when: {inactive_for: 1h}\nactions:\n"),
        [
            (
                9,
                "triggers.t.actions: expected a non-empty list of actions such as [{emit: email}], got null; "
                "leave actions out to emit to the 'triggers' channel",
            )
        ],
    ),
    (
        "bad actions",
        trigger(
            "when: {inactive_for: 1h}\nactions:\n  - {emit: a, tag: b}\n  - {mail: x}\n  - {emit: ''}\n"
            "  - {tag: yes}\n  - {emit: a}\n  - {emit: a}\n  - emit\n  - {}\n"
        ),
        [
            (
                10,
                "triggers.t.actions[0]: an action has exactly one key, such as {emit: email}; got 2 (emit, tag)",
            ),
            (
                11,
                "triggers.t.actions[1]: unknown action 'mail'; allowed actions: emit, tag, untag, stage",
            ),
            (12, "triggers.t.actions[2].emit: expected a non-empty string, got ''"),
            (13, "triggers.t.actions[3].tag: expected a string, got True; to mean the text 'yes', quote it"),
            (15, "triggers.t.actions[5]: {emit: a} is already listed as actions[4]; list each action once"),
            (16, "triggers.t.actions[6]: expected an action such as {emit: email}, got 'emit'"),
            (17, "triggers.t.actions[7]: an action has exactly one key, such as {emit: email}; got 0 (none)"),
        ],
    ),
    # YAML that is not accepted in rule files
    (
        "explicit tags",
        HEADER + "scores: !!set {a, b}\ntriggers:\n  t:\n    when: {inactive_for: !!int abc}\n    cooldown: !x 1h\n",
        [
            (2, "scores: expected a map from score name to its definition, got a map tagged !!set"),
            (5, "triggers.t.when.inactive_for: expected a duration such as '30m', got 'abc' tagged !!int"),
            (6, "triggers.t.cooldown: expected a duration such as '30m', got '1h' tagged !x"),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_errors_point_at_their_line(tmp_path: Path, text: str, expected: list[tuple[int, str]]) -> None:
    path = write(tmp_path, text)
    assert problems(path) == expected
    assert check_rules(path) == [f"{path}:{line}: {message}" for line, message in expected]


def test_more_timer_triggers_than_the_engine_holds_are_refused_at_the_first_extra(tmp_path: Path) -> None:
    # 255 triggers with a timer load; the 256th (a falls_below on line 4 + 255 + 2) is refused.
    quiet = "".join(f"  q{i}: {{when: {{inactive_for: 1d}}}}\n" for i in range(255))
    head = "version: 1\nscores:\n  s: {half_life: 1h, points: [{event: X, add: 1}]}\ntriggers:\n"
    path = tmp_path / "rules.yaml"
    path.write_text(head + quiet)
    assert len(load_rules(path).triggers) == 255
    path.write_text(head + quiet + "  up: {when: {score: s, rises_above: 1}}\n  down: {when: {score: s, falls_below: 1}}\n")
    assert problems(str(path)) == [(4 + 255 + 2, "triggers.down: more than 255 triggers need a timer (first/then_not, "
                                                 "inactive_for, falls_below; 256 here); split the rules over several engines")]


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        triggers:
          hot:
            when: {score: engagement, rises_above: 10}
            cooldown: 1 day
        scores:
          engagement:
            half_life: 7d
            max: -5
            points:
              - {event: Page Viewed, add: one}
          other:
            half_life: 1h
            points: [{event: X, add: 1}]
            extra: true
        """,
    )
    assert problems(path) == [
        (5, f"triggers.hot.cooldown: invalid duration '1 day': {HINT}"),
        (9, "scores.engagement.max: must be >= 0 (scores start at 0 and decay towards 0), got -5"),
        (11, "scores.engagement.points[0].add: expected a number, got 'one'"),
        (15, "scores.other: unknown key 'extra'; allowed keys: half_life, min, max, points"),
    ]


class TestFiles:
    def test_yaml_syntax_error(self, tmp_path: Path) -> None:
        path = write(tmp_path, "version: 1\ntriggers:\n  t: {when: [1}\n")
        assert problems(path) == [(3, "invalid YAML: while parsing a flow sequence, expected ',' or ']', but got '}'")]

    def test_bad_indentation(self, tmp_path: Path) -> None:
        path = write(tmp_path, "version: 1\nscores:\n  s:\n    half_life: 1h\n   points: []\n")
        assert problems(path) == [
            (
                5,
                "invalid YAML: while parsing a block mapping, expected <block end>, but found '<block mapping start>'",
            )
        ]

    @pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
    def test_empty_file(self, tmp_path: Path, text: str) -> None:
        path = write(tmp_path, text)
        assert problems(path) == [(1, "file is empty; a rules file starts with 'version: 1'")]

    @pytest.mark.parametrize(("text", "shown"), [("- 1\n", "a list"), ("\nversion 1\n", "'version 1'")])
    def test_top_level_must_be_a_map(self, tmp_path: Path, text: str, shown: str) -> None:
        path = write(tmp_path, text)
        assert problems(path) == [
            (
                text.count("\n", 0, text.index(text.strip())) + 1,
                f"the top level must be a map of version, lateness, scores, triggers; got {shown}",
            )
        ]

    def test_two_documents(self, tmp_path: Path) -> None:
        path = write(tmp_path, "version: 1\n---\nversion: 1\n")
        assert problems(path) == [(2, "invalid YAML: expected a single document in the stream, but found another document")]

    def test_not_utf8(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.yaml"
        path.write_bytes("version: 1\ntriggers:\n  t: {when: {inactive_for: 1h}, actions: [{emit: café}]}\n".encode("latin-1"))
        assert problems(str(path)) == [(3, "file is not UTF-8: byte 0xe9 at column 53; save it as UTF-8")]

    def test_utf8_with_bom_and_crlf(self, tmp_path: Path) -> None:
        path = tmp_path / "bom.yaml"
        path.write_bytes(
            b"\xef\xbb\xbfversion: 1\r\ntriggers:\r\n  t: {when: {inactive_for: 1h}, actions: [{emit: caf\xc3\xa9}]}\r\n"
        )
        assert load_rules(str(path)).triggers[0].actions == (Action("emit", "café"),)

    def test_control_character(self, tmp_path: Path) -> None:
        path = tmp_path / "nul.yaml"
        path.write_bytes(b"version: 1\n\n  \x00\n")
        assert problems(str(path)) == [(3, "invalid YAML: character U+0000 is not allowed in YAML; remove it")]

    def test_missing_file(self, tmp_path: Path) -> None:
        path = str(tmp_path / "nope.yaml")
        assert problems(path) == [(0, "cannot read rules: No such file or directory")]

    def test_oversized_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, HEADER + "#" * MAX_FILE_BYTES + "\n")
        assert problems(path) == [(1, f"file is over {MAX_FILE_BYTES} bytes; split the rules into several files")]

    def test_deep_nesting_is_refused(self, tmp_path: Path) -> None:
        path = write(tmp_path, HEADER + "x: " + "[" * 10_000 + "]" * 10_000 + "\n")
        assert problems(path) == [(2, f"nested deeper than {MAX_DEPTH} levels; rule files never need that many")]

    def test_aliases_are_refused(self, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            """\
            version: 1
            scores:
              s:
                half_life: 1h
                points: &points [{add: 1}]
              t:
                half_life: 2h
                points: *points
            """,
        )
        assert problems(path) == [
            (
                8,
                "YAML alias *points is not allowed in rule files (aliases can expand exponentially); write the value out in full",
            )
        ]

    def test_billion_laughs_is_refused_fast(self, tmp_path: Path) -> None:
        lines = ["version: 1", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
            lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        path = write(tmp_path, "\n".join(lines) + "\n")
        started = time.perf_counter()
        found = problems(path)
        assert time.perf_counter() - started < 1.0
        assert found == [
            (
                3,
                "YAML alias *a is not allowed in rule files (aliases can expand exponentially); write the value out in full",
            )
        ]

    def test_anchor_without_alias_is_harmless(self, tmp_path: Path) -> None:
        path = write(tmp_path, "version: 1\nlateness: &l 1m\n")
        assert load_rules(path).lateness_ms == MINUTE

    @pytest.mark.parametrize(
        "text",
        [
            "version: 1\nx: !!python/object:os.system {}\n",
            "version: !!python/name:os.system 1\n",
            "\t- [\n",
            "version: 1\nscores: {s: {half_life: 1h, points: [{add: !!float x}]}}\n",
            "%YAML 9.9\n---\nversion: 1\n",
            "? a\n? a\n",
            "version: 1\n" + "a: b\n" * 2 + "c: [" * 40,
            "\ufffe",
            "version: 1\nlateness: !!int\n",
            "version: 1\nlateness: !!float\n",
            "version: !!bool\n",
        ],
    )
    def test_hostile_input_gives_problems_not_tracebacks(self, tmp_path: Path, text: str) -> None:
        path = write(tmp_path, text)
        assert problems(path)


class TestDirectories:
    SCORES = "version: 1\nlateness: 1m\nscores:\n  s: {half_life: 1h, points: [{add: 1}]}\n"
    TRIGGERS = "version: 1\ntriggers:\n  t: {when: {score: s, rises_above: 1}}\n"

    def test_files_are_merged_in_name_order(self, tmp_path: Path) -> None:
        b = write(tmp_path, self.SCORES, "b.yml")
        a = write(tmp_path, self.TRIGGERS, "a.yaml")  # refers to a score defined in a later file
        c = write(tmp_path, "version: 1\nlateness: 1m\ntriggers:\n  u: {when: {inactive_for: 1d}}\n", "c.yaml")
        write(tmp_path, "not: [yaml", "notes.txt")
        write(tmp_path, "not: [yaml", ".#a.yaml")
        (tmp_path / "sub").mkdir()
        write(tmp_path / "sub", "not: [yaml", "x.yaml")
        rules = load_rules(tmp_path)
        assert rules.sources == (a, b, c)
        assert rules.lateness_ms == MINUTE
        assert [s.origin for s in rules.scores] == [Origin(b, 4)]
        assert [(t.name, t.origin) for t in rules.triggers] == [("t", Origin(a, 3)), ("u", Origin(c, 4))]
        assert check_rules(str(tmp_path)) == []

    def test_names_are_unique_across_files(self, tmp_path: Path) -> None:
        a = write(tmp_path, self.SCORES + "triggers:\n  t: {when: {inactive_for: 1h}}\n", "a.yaml")
        b = write(tmp_path, "version: 1\n" + self.SCORES[24:] + self.TRIGGERS[11:], "b.yaml")
        assert check_rules(tmp_path) == [
            f"{b}:3: scores.s: score 's' is already defined at {a}:4; rename one of them",
            f"{b}:5: triggers.t: trigger 't' is already defined at {a}:6; rename one of them",
        ]

    def test_lateness_must_agree(self, tmp_path: Path) -> None:
        a = write(tmp_path, "version: 1\nlateness: 60s\n", "a.yaml")
        write(tmp_path, "version: 1\nlateness: 1m\n", "b.yaml")
        c = write(tmp_path, "version: 1\n\nlateness: 2m\n", "c.yaml")
        assert check_rules(tmp_path) == [f"{c}:3: lateness: '2m' differs from '60s' set at {a}:2; set lateness in one file only"]

    def test_every_file_needs_a_version(self, tmp_path: Path) -> None:
        write(tmp_path, self.SCORES, "a.yaml")
        b = write(tmp_path, self.TRIGGERS[11:], "b.yaml")
        assert check_rules(tmp_path) == [f"{b}:1: top level: missing 'version'; add it, e.g. 'version: 1' as the first line"]

    def test_problems_of_all_files_are_listed_in_file_order(self, tmp_path: Path) -> None:
        b = write(tmp_path, "version: 1\ntriggers:\n  t: {when: {score: nope, rises_above: 1}}\n", "b.yaml")
        a = write(tmp_path, "version: 3\n", "a.yaml")
        assert check_rules(tmp_path) == [
            f"{a}:1: version: unsupported version 3; this halflife reads version: 1",
            f"{b}:3: triggers.t.when.score: undefined score 'nope'; defined scores: none",
        ]

    def test_unreadable_file_suppresses_undefined_score_errors(self, tmp_path: Path) -> None:
        a = write(tmp_path, "version: 1\nscores: {s: [\n", "a.yaml")
        write(tmp_path, self.TRIGGERS, "b.yaml")
        assert check_rules(tmp_path) == [
            f"{a}:3: invalid YAML: while parsing a flow node, expected the node content, but found '<stream end>'"
        ]

    def test_directory_without_rule_files(self, tmp_path: Path) -> None:
        write(tmp_path, "x", "rules.txt")
        assert check_rules(tmp_path) == [f"{tmp_path}:0: no rule files in this directory; add a *.yaml or *.yml file"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_load(path: Path) -> None:
    assert check_rules(path) == []
    assert load_rules(path).sources == (str(path),)


def test_ecommerce_example_has_the_promised_triggers() -> None:
    rules = load_rules(EXAMPLES / "ecommerce.yaml")
    names = {t.name for t in rules.triggers}
    assert {"cart_abandoned", "hot_lead", "pricing_binge", "cooling_off", "gone_quiet"} <= names
    assert {s.name for s in rules.scores} >= {"engagement"}


YAML_PIECES = list("{}[]:,-'\"&*!|>%#? \n\t.0aZ~") + [
    "yes",
    "null",
    ".nan",
    "!!set",
    "<<",
    "1e400",
    "\x00",
    "!!int ",
    "!!float ",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SPEC_EXAMPLE)), st.sampled_from(YAML_PIECES), st.booleans()), max_size=5))
def test_mangled_rules_give_problems_never_tracebacks(edits: list[tuple[int, str, bool]]) -> None:
    text = SPEC_EXAMPLE
    for position, piece, replace in edits:
        text = text[:position] + piece + text[position + replace :]
    outcome(text.encode("utf-8"))

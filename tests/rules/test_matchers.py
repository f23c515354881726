from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules import Condition, MatcherSpec, compile_where, event_matches
from rules.matchers import json_equal, json_key, matcher_key


def holds(path: str, op: str, value: Any, event: dict[str, Any]) -> bool:
    return compile_where((Condition(tuple(path.split(".")), op, value),))(event)  # type: ignore[arg-type]


EVENT: dict[str, Any] = {
    "type": "page",
    "name": "Pricing",
    "event": "Page Viewed",
    "properties": {
        "path": "/pricing/teams",
        "price": 49.9,
        "qty": 1,
        "flag": True,
        "coupon": None,
        "tags": ["sale", 7, True, {"k": 1}],
        "dims": {"w": 1, "h": 2.0},
        "items": [1, 2.0, [3]],
    },
    "context": {"page": {"path": "/pricing/teams", "referrer": None}, "channel": "web"},
}


class TestPaths:
    def test_top_level_and_nested(self) -> None:
        assert holds("name", "eq", "Pricing", EVENT)
        assert holds("properties.price", "eq", 49.9, EVENT)
        assert holds("context.page.path", "eq", "/pricing/teams", EVENT)

    def test_path_through_a_non_object_is_missing(self) -> None:
        assert not holds("properties.price.cents", "exists", True, EVENT)
        assert holds("properties.price.cents", "exists", False, EVENT)
        assert not holds("properties.tags.0", "eq", "sale", EVENT)  # arrays are not indexed
        assert not holds("name.x.y", "eq", None, EVENT)

    def test_missing_key_at_each_depth(self) -> None:
        for path in ("nope", "properties.nope", "context.page.nope", "context.nope.path"):
            assert not holds(path, "eq", None, EVENT)
            assert holds(path, "ne", None, EVENT)
            assert holds(path, "exists", False, EVENT)

    def test_object_values_can_be_compared_whole(self) -> None:
        assert holds("properties.dims", "eq", {"w": 1.0, "h": 2}, EVENT)
        assert not holds("properties.dims", "eq", {"w": 1}, EVENT)


class TestEq:
    @pytest.mark.parametrize(
        ("literal", "value", "expected"),
        [
            (1, 1.0, True),
            (1.0, 1, True),
            (0, -0.0, True),
            (True, 1, False),
            (1, True, False),
            (0, False, False),
            (False, 0, False),
            (True, True, True),
            (False, False, True),
            ("1", 1, False),
            (1, "1", False),
            ("a", "a", True),
            ("a", "A", False),
            (None, None, True),
            (None, 0, False),
            (None, "", False),
            (None, False, False),
            ([1, "a"], [1.0, "a"], True),
            ((1, "a"), [1.0, "a"], True),
            ([1], [True], False),
            ([1, 2], [2, 1], False),
            ([1], [1, 1], False),
            ({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]}, True),
            ({"a": 1}, {"a": True}, False),
            ({"a": 1}, {"a": 1, "b": 2}, False),
            ({}, [], False),
            ([], {}, False),
            (2**60, 2**60, True),
            (2**60 + 1, float(2**60), False),
        ],
    )
    def test_json_equality(self, literal: Any, value: Any, expected: bool) -> None:
        assert holds("properties.x", "eq", literal, {"properties": {"x": value}}) is expected
        assert holds("properties.x", "ne", literal, {"properties": {"x": value}}) is not expected
        assert json_equal(literal, value) is expected
        assert json_equal(value, literal) is expected

    @pytest.mark.parametrize("literal", [None, 0, False, "", [], {}, "x"])
    def test_missing_equals_nothing_and_ne_holds(self, literal: Any) -> None:
        assert not holds("properties.absent", "eq", literal, EVENT)
        assert holds("properties.absent", "ne", literal, EVENT)

    def test_null_matches_only_a_present_null(self) -> None:
        assert holds("properties.coupon", "eq", None, EVENT)
        assert not holds("properties.coupon", "ne", None, EVENT)
        assert not holds("properties.absent", "eq", None, EVENT)


class TestIn:
    LIST = ("a", 1, None, (1, 2), {"k": True})

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("a", True),
            ("b", False),
            (1, True),
            (1.0, True),
            (True, False),
            ("1", False),
            (None, True),
            ([1, 2], True),
            ([1.0, 2.0], True),
            ([2, 1], False),
            ({"k": True}, True),
            ({"k": 1}, False),
        ],
    )
    def test_membership_by_json_equality(self, value: Any, expected: bool) -> None:
        event = {"properties": {"x": value}}
        assert holds("properties.x", "in", self.LIST, event) is expected
        assert holds("properties.x", "not_in", self.LIST, event) is not expected

    def test_bools_and_numbers_stay_apart(self) -> None:
        assert not holds("properties.x", "in", [1, 0], {"properties": {"x": True}})
        assert not holds("properties.x", "in", [1, 0], {"properties": {"x": False}})
        assert not holds("properties.x", "in", [True], {"properties": {"x": 1}})
        assert not holds("properties.x", "in", [False], {"properties": {"x": 0.0}})
        assert holds("properties.x", "in", [True], {"properties": {"x": True}})

    def test_missing_is_in_nothing(self) -> None:
        assert not holds("properties.absent", "in", [None, "a"], EVENT)
        assert holds("properties.absent", "not_in", [None, "a"], EVENT)

    def test_empty_list(self) -> None:
        assert not holds("name", "in", [], EVENT)
        assert holds("name", "not_in", [], EVENT)


class TestOrdering:
    @pytest.mark.parametrize(
        ("op", "literal", "value", "expected"),
        [
            ("gt", 10, 10.5, True),
            ("gt", 10, 10, False),
            ("gte", 10, 10.0, True),
            ("gte", 10.5, 10, False),
            ("lt", 0, -1, True),
            ("lt", 0, 0, False),
            ("lte", 0, 0.0, True),
            ("lte", 0, 1, False),
            ("gt", "b", "c", True),
            ("gt", "b", "b", False),
            ("gte", "b", "b", True),
            ("lt", "b", "a", True),
            ("lte", "b", "ba", False),
            ("gte", "2026-01-01", "2026-11-23T14:00:00Z", True),
            # different JSON types never compare
            ("gt", 0, True, False),
            ("gte", 1, True, False),
            ("lt", 5, "1", False),
            ("gt", "1", 5, False),
            ("gt", 0, None, False),
            ("gt", 0, [1], False),
        ],
    )
    def test_compare(self, op: str, literal: Any, value: Any, expected: bool) -> None:
        assert holds("properties.x", op, literal, {"properties": {"x": value}}) is expected

    @pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
    def test_missing_is_false(self, op: str) -> None:
        assert not holds("properties.absent", op, 0, EVENT)
        assert not holds("properties.absent", op, "", EVENT)

    @pytest.mark.parametrize("literal", [True, None, [1], {"a": 1}])
    def test_literal_must_be_a_number_or_string(self, literal: Any) -> None:
        with pytest.raises(ValueError) as info:
            holds("properties.x", "gt", literal, EVENT)
        assert str(info.value) == f"'gt' needs a number or a string, got {literal!r}"


class TestStrings:
    def test_startswith(self) -> None:
        assert holds("properties.path", "startswith", "/pricing", EVENT)
        assert holds("properties.path", "startswith", "", EVENT)
        assert not holds("properties.path", "startswith", "/Pricing", EVENT)
        assert not holds("properties.qty", "startswith", "1", EVENT)
        assert not holds("properties.tags", "startswith", "sale", EVENT)
        assert not holds("properties.absent", "startswith", "", EVENT)

    def test_contains_substring(self) -> None:
        assert holds("properties.path", "contains", "cing/te", EVENT)
        assert not holds("properties.path", "contains", "checkout", EVENT)
        assert not holds("properties.path", "contains", 1, EVENT)

    def test_contains_list_membership_by_json_equality(self) -> None:
        assert holds("properties.tags", "contains", "sale", EVENT)
        assert not holds("properties.tags", "contains", "sa", EVENT)  # an element, not a substring
        assert holds("properties.tags", "contains", 7.0, EVENT)
        assert holds("properties.tags", "contains", True, EVENT)
        assert not holds("properties.items", "contains", True, EVENT)  # 1 is not true
        assert holds("properties.items", "contains", 2, EVENT)
        assert holds("properties.items", "contains", [3.0], EVENT)
        assert holds("properties.tags", "contains", {"k": 1.0}, EVENT)
        assert not holds("properties.tags", "contains", None, EVENT)

    def test_contains_on_other_types_is_false(self) -> None:
        assert not holds("properties.qty", "contains", 1, EVENT)
        assert not holds("properties.dims", "contains", "w", EVENT)  # not on object keys
        assert not holds("properties.absent", "contains", "", EVENT)


class TestExists:
    @pytest.mark.parametrize(
        ("path", "present"),
        [
            ("properties.price", True),
            ("properties.flag", True),
            ("properties.tags", True),
            ("context.page.path", True),
            ("properties.coupon", False),
            ("context.page.referrer", False),
            ("properties.absent", False),
            ("properties.path.x", False),
        ],
    )
    def test_exists(self, path: str, present: bool) -> None:
        assert holds(path, "exists", True, EVENT) is present
        assert holds(path, "exists", False, EVENT) is not present

    def test_falsy_values_exist(self) -> None:
        for value in (0, False, "", [], {}):
            assert holds("x", "exists", True, {"x": value})


class TestCompileWhere:
    def test_no_conditions_match_everything(self) -> None:
        assert compile_where(())({})

    @pytest.mark.parametrize("count", [2, 3, 5])
    def test_all_conditions_must_hold(self, count: int) -> None:
        conditions = [Condition(("properties", "qty"), "eq", 1)] * (count - 1)
        assert compile_where(tuple(conditions + [Condition(("name",), "eq", "Pricing")]))(EVENT)
        assert not compile_where(tuple(conditions + [Condition(("name",), "eq", "Cart")]))(EVENT)
        assert not compile_where(tuple([Condition(("name",), "eq", "Cart")] + conditions))(EVENT)

    @pytest.mark.parametrize(
        ("op", "value", "message"),
        [
            ("in", "x", "'in' needs a list of values, got 'x'"),
            ("not_in", 3, "'not_in' needs a list of values, got 3"),
            ("startswith", 1, "'startswith' needs a string, got 1"),
            ("exists", 1, "'exists' needs true or false, got 1"),
            ("regex", ".*", "unknown operator 'regex'"),
        ],
    )
    def test_invalid_conditions_are_refused(self, op: str, value: Any, message: str) -> None:
        with pytest.raises(ValueError) as info:
            compile_where((Condition(("x",), op, value),))  # type: ignore[arg-type]
        assert str(info.value) == message

    def test_empty_path_is_refused(self) -> None:
        with pytest.raises(ValueError, match="^a condition path needs at least one key$"):
            compile_where((Condition((), "eq", 1),))


class TestEventMatches:
    def test_no_event_key_matches_every_event(self) -> None:
        assert event_matches(None, "Page Viewed")
        assert event_matches(None, None)

    def test_names(self) -> None:
        names = frozenset({"Order Completed", "Checkout Cancelled"})
        assert event_matches(names, "Order Completed")
        assert not event_matches(names, "order completed")
        assert not event_matches(names, None)  # identify, group, alias have no name


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, -2.0, 0.5]) | st.sampled_from(["", "a", "1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
    max_leaves=8,
)


@given(json_values, json_values)
def test_specialised_eq_agrees_with_json_equal(literal: Any, value: Any) -> None:
    event = {"x": value}
    assert holds("x", "eq", literal, event) is json_equal(literal, value)
    assert holds("x", "contains", literal, {"x": [value]}) is json_equal(literal, value)


@given(st.lists(json_values, max_size=4), json_values)
def test_in_agrees_with_json_equal(literals: list[Any], value: Any) -> None:
    expected = any(json_equal(x, value) for x in literals)
    assert holds("x", "in", literals, {"x": value}) is expected
    assert holds("x", "not_in", tuple(literals), {"x": value}) is not expected


@given(json_values, json_values)
def test_json_key_equal_exactly_when_json_equal(a: Any, b: Any) -> None:
    assert (json_key(a) == json_key(b)) is json_equal(a, b)
    if json_equal(a, b):
        assert hash(json_key(a)) == hash(json_key(b))


def test_matcher_key_tells_apart_what_python_equality_confuses() -> None:
    def spec(value: Any) -> MatcherSpec:
        return MatcherSpec(frozenset({"A"}), (Condition(("properties", "x"), "eq", value),))

    assert spec(1) == spec(True)  # why matcher_key exists
    assert matcher_key(spec(1)) != matcher_key(spec(True))
    assert matcher_key(spec((1, 0))) != matcher_key(spec((True, False)))
    assert matcher_key(spec(1)) == matcher_key(spec(1.0))
    assert matcher_key(spec({"a": (1, None)})) == matcher_key(spec({"a": (1.0, None)}))
    assert len({matcher_key(spec({"a": 1})), matcher_key(spec({"a": True})), matcher_key(MatcherSpec(None))}) == 3


def test_json_key_refuses_non_json_values() -> None:
    with pytest.raises(ValueError) as info:
        json_key({1, 2})
    assert str(info.value) == "not a JSON value: {1, 2}"

"""Shared pieces of the hostile-input tests: hypothesis profiles, strategies for hostile JSON lines,
independent oracles for the decoder, a raw HTTP client and a collector served for real.

Profiles (the environment variable HYPOTHESIS_PROFILE picks one; CI uses the default):

    ci     200 examples per property (dataflow runs: 30), no deadline     (default)
    long   HALFLIFE_FUZZ_EXAMPLES per property (default 100,000); dataflow runs
           HALFLIFE_FUZZ_DATAFLOW_EXAMPLES (default 2,000)             (`python -m bench.fuzz`)

The profiles are applied per test (`@fuzz()`), never loaded globally, so that the other test
directories keep their own hypothesis settings when the whole suite runs.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sys
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from engine.collector import CollectorConfig, build_app
from engine.decode import MAX_DEPTH, MAX_LINE_BYTES
from engine.times import MAX_TIME_MS, parse_time

# --- profiles ----------------------------------------------------------------------------------------------

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
           HealthCheck.filter_too_much]
LONG_EXAMPLES = int(os.environ.get("HALFLIFE_FUZZ_EXAMPLES", "100000"))
LONG_DATAFLOW_EXAMPLES = int(os.environ.get("HALFLIFE_FUZZ_DATAFLOW_EXAMPLES", "2000"))
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile("long", max_examples=LONG_EXAMPLES, deadline=None, suppress_health_check=_HEALTH,
                          print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    settings.get_profile(PROFILE)  # another registered profile (e.g. hypothesis' "default"), or an error


def fuzz(*, dataflow: bool = False) -> settings:
    """The settings of one property under the selected profile; `dataflow` properties run a whole
    bytewax dataflow per example and get fewer examples."""
    base = settings.get_profile(PROFILE)
    if not dataflow:
        return settings(base)
    return settings(base, max_examples=LONG_DATAFLOW_EXAMPLES if PROFILE == "long" else min(30, base.max_examples))


# --- hostile JSON text ---------------------------------------------------------------------------------------

# Numbers as JSON text, including what is not JSON (NaN, Infinity, leading zeros, hex) and what overflows.
HOSTILE_NUMBERS = [
    b"1e400", b"-1e400", b"1e-400", b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"inf",
    str(2**70).encode(), str(-(2**70)).encode(), str(2**64).encode(), str(2**64 - 1).encode(), str(2**63).encode(),
    str(-(2**63) - 1).encode(), str(-(2**63)).encode(), b"1" * 400, b"-0", b"-0.0", b"0.5", b"1E2", b"1e20", b"-1e20",
    b"01", b"1.", b".5", b"+1", b"0x10", b"1_000", b"-", b"1e", b"-1", b"0",
    str(MAX_TIME_MS).encode(), str(MAX_TIME_MS - 1).encode(), b"1795442400000.9", b"1795442400000.999999999",
    b"4.9e-324", b"1.7976931348623157e308", b"1.8e308",
]
# Strings as JSON text: invalid escapes, lone surrogates, invalid UTF-8, raw control characters.
HOSTILE_STRINGS = [
    b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\ud83d\\ude00"', b'"\\u0000"', b'"\\uZZZZ"', b'"\\x41"', b'"\\q"',
    b'"\xff\xfe"', b'"\xc3("', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\xc0\xaf"', b'"\xe2\x82"',
    b'"\x01"', b'"tab\there"', b'"new\rline"', b'"unterminated', b"'single'", b'"\xe2\x80\xae rtl"',
    b'"\xef\xbb\xbf"', b'"\\/"', b'""', b'" "', b'"\\\\"', b'"\xf0\x9f\x92\xa9"',
]
OTHER_TOKENS = [b"true", b"false", b"null", b"True", b"None", b"undefined", b"[]", b"{}", b"[", b"{", b"]", b"}",
                b"[,]", b"{,}", b'{"a"}', b'{"a":}', b'{1:2}', b"[1,]", b'{"a":1,}', b"", b" ", b"//", b"/**/"]

# Timestamps: far past and future, out of range after a zone, malformed, of the wrong type.
HOSTILE_TIMES: list[Any] = [
    "0001-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z", "1970-01-01T00:00:00Z",
    "1970-01-01T00:30:00+01:00", "9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59-01:00", "10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z", "+2026-11-23T14:00:00Z", "2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z",
    "2026-11-23T24:00:00Z", "2026-11-23T23:59:60Z", "2026-11-23T14:00:00.123456789Z", "2026-11-23T14:00:00+24:00",
    "2026-11-23T14:00:00+23:59", "2026-11-23", "14:00:00", "2026-11-23T14:00Z", "2026-W48-1", "now", "", " ",
    "2026-11-23T14:00:00.000Z ", "\uff12\uff10\uff12\uff16-11-23T14:00:00Z", "1795442400000",
    0, -1, -1795442400000, 1795442400000, MAX_TIME_MS - 1, MAX_TIME_MS, 10**20, -(10**20), 2**63, 2**64 - 1,
    1795442400000.5, -0.0, 0.9, 1e20, -1e-300, 5e-324, True, False, None, [], {}, [1795442400000],
    {"$date": 1795442400000},
]

_KEYS = ["type", "event", "userId", "anonymousId", "messageId", "timestamp", "sentAt", "receivedAt",
         "properties", "context", "traits", "name", "writeKey", "batch", "__proto__", "", "userid", "user Id"]
_PLAUSIBLE: dict[str, list[Any]] = {
    "type": ["track", "page", "screen", "identify", "group", "alias", None, "Track", "shout", ""],
    "event": ["Product Added", "Order Completed", "Page Viewed", "E", ""],
    "userId": ["u-1", "u-2", 42, 0, -7, 2**63, "", " "],
    "anonymousId": ["a-1", 7, ""],
    "messageId": ["m-1", "m-2", None, ""],
    "timestamp": ["2026-11-23T14:00:00.000Z", 1795442400000, "2026-11-23T09:00:00-05:00"],
    "sentAt": ["2026-11-23T14:00:05.000Z"],
    "receivedAt": ["2026-11-23T14:00:03.000Z"],
    "properties": [{}, {"path": "/pricing"}, None],
    "context": [{}, None],
    "traits": [{}, None],
}


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value).encode()  # ints beyond 64 bits


def nested(depth: int, inner: bytes = b"1", kind: str = "[") -> bytes:
    """`depth` levels of arrays (or objects) around `inner`."""
    if kind == "[":
        return b"[" * depth + inner + b"]" * depth
    return b'{"a":' * depth + inner + b"}" * depth


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


# Strategies are built once, at import: hypothesis validates every new strategy object on its first draw,
# and building them inside the composites below made data generation cost most of each example.
_S = {
    "numbers": st.sampled_from(HOSTILE_NUMBERS),
    "strings": st.sampled_from(HOSTILE_STRINGS),
    "tokens": st.sampled_from(OTHER_TOKENS),
    "times": st.sampled_from(HOSTILE_TIMES),
    "sizes": st.sampled_from([1000, 8191, 8192, 8193, 20000, MAX_LINE_BYTES - 100, MAX_LINE_BYTES + 10]),
    "units": st.sampled_from([b"x", b"\xc3\xa9", b"\\n", b"\\u00e9"]),
    "levels": st.sampled_from([MAX_DEPTH - 3, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 100, 253, 300, 1000, 1023,
                               1024, 1025, 10_000]),
    "brackets": st.sampled_from("[{"),
    "text30": st.text(max_size=30),
    "keys": st.lists(st.sampled_from(_KEYS) | st.text(max_size=5), max_size=4),
    "key": st.sampled_from(_KEYS) | st.text(max_size=8),
    "tails": st.sampled_from([b"x", b",", b"}", b" {}", b"\x00", b"\r", b"\t \r"]),
    "heads": st.sampled_from([b" ", b"\t", b"\r", b"\x0b", b"\x0c"]),
    "random": st.randoms(use_true_random=False),
}
_PLAUSIBLE_S = {key: st.sampled_from(values) for key, values in _PLAUSIBLE.items()}
_KINDS = [st.integers(0, 11), st.integers(0, 11), st.integers(0, 11), st.integers(0, 7)]


@st.composite
def _hostile_value(draw: st.DrawFn, depth: int) -> bytes:
    kind = draw(_KINDS[depth])
    if kind == 0:
        return draw(_S["numbers"])
    if kind == 1:
        return draw(_S["strings"])
    if kind == 2:
        return draw(_S["tokens"])
    if kind == 3:
        return _dumps(draw(_S["times"]))
    if kind == 4:
        return _dumps(draw(json_values))
    if kind == 5:  # a huge string: near, at and over the limits
        return b'"' + draw(_S["units"]) * (draw(_S["sizes"]) // 2) + b'"'
    if kind == 6:  # deep nesting, balanced or not
        text = nested(draw(_S["levels"]), b"1", draw(_S["brackets"]))
        return text if draw(st.booleans()) else text[:-1]
    if kind == 7:
        return _dumps(draw(_S["text30"]))
    if kind in (8, 9):  # an array
        return b"[" + b",".join(draw(_ARRAYS[depth])) + b"]"
    # an object, possibly with duplicate keys
    pairs = [_dumps(k) + b":" + draw(_VALUES[depth + 1]) for k in draw(_S["keys"])]
    return b"{" + b",".join(pairs) + b"}"


_VALUES = [_hostile_value(depth) for depth in range(4)]
_ARRAYS = [st.lists(_VALUES[depth + 1], max_size=3) for depth in range(3)]


def hostile_value() -> st.SearchStrategy[bytes]:
    """One JSON value as text, often not valid JSON."""
    return _VALUES[0]


@st.composite
def _event_line(draw: st.DrawFn) -> bytes:
    parts = []
    for key in _PLAUSIBLE:
        if draw(_KINDS[3]) < 2:
            continue  # absent
        choice = draw(_KINDS[3])
        if choice <= 3:
            value = _dumps(draw(_PLAUSIBLE_S[key]))
        elif choice == 4 and key in ("timestamp", "sentAt", "receivedAt"):
            value = _dumps(draw(_S["times"]))
        elif choice == 4:
            value = _dumps(draw(json_values))
        else:
            value = draw(_VALUES[0])
        parts.append(_dumps(key) + b":" + value)
    rnd = draw(_S["random"])
    extra = draw(_KINDS[3])
    if extra == 0 and parts:  # a duplicate key: the last value wins
        parts.append(rnd.choice(parts).split(b":", 1)[0] + b":" + draw(_VALUES[0]))
    elif extra == 1:
        parts.append(_dumps(draw(_S["key"])) + b":" + draw(_VALUES[0]))
    rnd.shuffle(parts)
    raw = b"{" + b",".join(parts) + b"}"
    frame = draw(_KINDS[0])
    if frame == 0:
        raw = b"\xef\xbb\xbf" + raw
    elif frame == 1:
        raw = raw + draw(_S["tails"])
    elif frame == 2:
        raw = raw[: rnd.randrange(max(1, len(raw)))]
    elif frame == 3:
        raw = draw(_S["heads"]) + raw
    return raw


_EVENT_LINE = _event_line()


def event_line() -> st.SearchStrategy[bytes]:
    """An event-like JSON object as text: each field plausible, of a wrong type, or hostile; duplicate
    keys and unknown keys; sometimes framed badly (BOM, garbage, truncation, whitespace)."""
    return _EVENT_LINE


blank_lines = st.sampled_from([b"", b" ", b"\t", b"\r", b" \t\r ", b"\x0b\x0c", b"   \r"])
# Not blank: Unicode spaces, NUL, a lone comma.
near_blank_lines = st.sampled_from([b"\xc2\xa0", b"\xe2\x80\x83", b"\x00", b",", b"\x1c", b"\xef\xbb\xbf"])

hostile_lines = st.one_of(
    event_line(), event_line(), hostile_value(), st.binary(max_size=200), blank_lines, near_blank_lines,
    st.builds(lambda n: b"x" * n, st.sampled_from([MAX_LINE_BYTES, MAX_LINE_BYTES + 1])),
)


# --- oracles -------------------------------------------------------------------------------------------------

class _NotJSON(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"{text} overflows")
    return value


def _normalize(value: Any) -> Any:
    """Python's json values as orjson gives them: integers beyond 64 bits become floats."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            node.encode("utf-8")  # a lone surrogate from a \\ud800 escape: orjson refuses it
            continue
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        for key, child in items:
            if isinstance(key, str):
                key.encode("utf-8")
            if type(child) is int and not -(2**63) <= child < 2**64:
                child = float(child)
                if not math.isfinite(child):
                    raise _NotJSON("integer overflows a double")
                node[key] = child
            elif isinstance(child, (dict, list, str)):
                stack.append(child)
    if type(value) is int and not -(2**63) <= value < 2**64:
        value = float(value)
    return value


# orjson parses documents nested up to 1024 levels.
ORJSON_MAX_DEPTH = 1024
UNKNOWN = object()  # Python's parser gave up (recursion) where orjson need not


def _check_leaves(value: Any) -> None:
    """What orjson refuses while parsing, in a value (and its arrays; objects check their own)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            node.encode("utf-8")  # a lone surrogate from a \\ud800 escape
        elif type(node) is int and not -(2**63) <= node < 2**64:
            if not math.isfinite(float(node)):
                raise _NotJSON("integer overflows a double")
        elif isinstance(node, list):
            stack.extend(node)


class _Obj(dict):  # type: ignore[type-arg]
    """A parsed object that knows its nesting depth, counting members a later duplicate key replaced."""

    __slots__ = ("depth",)


def depth_of(value: Any) -> int:
    """Nesting levels of objects and arrays (the value itself is level 1), as orjson counts them."""
    if isinstance(value, _Obj):
        return value.depth
    if not isinstance(value, (list, dict)):
        return 0
    best = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        best = max(best, depth)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, _Obj):
                best = max(best, depth + child.depth)
            elif isinstance(child, (list, dict)):
                stack.append((child, depth + 1))
    return best


def final_depth(value: Any) -> int:
    """Nesting levels of the value as parsed (the value itself is level 1)."""
    best = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            best = max(best, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return best


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # orjson validates every member, even one a later duplicate key replaces.
    for key, value in pairs:
        key.encode("utf-8")
        _check_leaves(value)
    obj = _Obj(pairs)
    obj.depth = 1 + max((depth_of(value) for _, value in pairs), default=0)
    return obj


def _text_depth(raw: bytes) -> int:
    """The deepest nesting of brackets outside strings: exact for valid JSON, a bound for the rest."""
    depth = best = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            best = max(best, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return best


def strict_loads(raw: bytes) -> Any:
    """The line parsed by Python's json module held to RFC 8259 (no NaN/Infinity, no overflow, no lone
    surrogates, UTF-8 without BOM): the value; UNKNOWN when Python's parser ran out of recursion; raises
    _NotJSON when the line is not JSON."""
    if raw.count(b"[") + raw.count(b"{") > ORJSON_MAX_DEPTH and _text_depth(raw) > ORJSON_MAX_DEPTH:
        raise _NotJSON  # invalid, or valid and deeper than orjson parses: not JSON to the engine either way
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * ORJSON_MAX_DEPTH))  # Python's parser recurses once per level
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_pairs)
        _check_leaves(value)
        return _normalize(value)
    except (UnicodeError, ValueError, _NotJSON, OverflowError):
        raise _NotJSON from None
    except RecursionError:
        return UNKNOWN
    finally:
        sys.setrecursionlimit(limit)


_NAMES = {"page": "Page Viewed", "screen": "Screen Viewed", "identify": None, "group": None, "alias": None}


def expected_outcome(raw: bytes) -> tuple[str, Any] | None:
    """What SPEC §2 (and the README's reason order) says about one line, written plainly and without
    the decoder's shortcuts: None for a blank line, ("valid", (event, contact, name, time)), ("dead",
    reason), or ("unknown", None) when Python's parser cannot tell."""
    if not raw or raw.isspace():
        return None
    if len(raw) > MAX_LINE_BYTES:
        return ("dead", "oversize")
    try:
        obj = strict_loads(raw)
    except _NotJSON:
        return ("dead", "not_json")
    if obj is UNKNOWN:
        return ("unknown", None)
    if depth_of(obj) > ORJSON_MAX_DEPTH:  # counting members that later duplicate keys replace
        return ("dead", "not_json")
    if final_depth(obj) > MAX_DEPTH:  # of the event as decoded (the last value of a repeated key)
        return ("dead", "too_deep")
    if not isinstance(obj, dict):
        return ("dead", "not_object")
    call = obj.get("type")
    if call is not None and not isinstance(call, str):
        return ("dead", "wrong_field_type")
    if call is not None and call != "track" and call not in _NAMES:
        return ("dead", "bad_type")
    for key in ("event", "messageId"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return ("dead", "wrong_field_type")
    for key in ("properties", "context", "traits"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            return ("dead", "wrong_field_type")
    contact = None
    for key in ("userId", "anonymousId"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            contact = value
        elif type(value) is int:
            contact = str(value)
        if contact is not None:
            break
    if contact is None:
        return ("dead", "missing_contact")
    if call is None or call == "track":
        if not obj.get("event"):
            return ("dead", "missing_event")
        name = obj["event"]
    else:
        name = _NAMES[call]
    stamp = obj.get("timestamp")
    if stamp is not None:
        ms = parse_time(stamp)
        if ms is None:
            return ("dead", "bad_timestamp")
        sent, received = obj.get("sentAt"), obj.get("receivedAt")
        if sent is not None and received is not None:
            sent_ms, received_ms = parse_time(sent), parse_time(received)
            if sent_ms is not None and received_ms is not None:
                ms = received_ms - (sent_ms - ms)
                if not 0 <= ms < MAX_TIME_MS:
                    return ("dead", "bad_timestamp")
    else:
        ms = parse_time(obj.get("receivedAt"))
        if ms is None:
            return ("dead", "missing_timestamp")
    return ("valid", (obj, contact, name, ms))


def expected_dedupe(contacts: Sequence[str], message_ids: Sequence[str | None]) -> list[bool]:
    """SPEC §2 de-duplication over valid events in input order: True for a duplicate (its messageId is
    among the message ids of the contact's last 16 accepted events)."""
    recent: dict[str, deque[str | None]] = {}
    out = []
    for contact, mid in zip(contacts, message_ids, strict=True):
        ring = recent.setdefault(contact, deque(maxlen=16))
        duplicate = mid is not None and mid in ring
        out.append(duplicate)
        if not duplicate:
            ring.append(mid)
    return out


# --- raw HTTP ------------------------------------------------------------------------------------------------

def http_request(port: int, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, *,
                 chunked: bool = False, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (Connection: close); (status, headers, body) of the answer."""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        step = max(1, len(body) // 3 or 1)
        payload = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + step]), body[i:i + step])
                           for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading everything
        data = b""
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines and lines[0].startswith(b"HTTP/") else 0
    out_headers = {}
    for raw in lines[1:]:
        name, _, value = raw.partition(b":")
        out_headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if out_headers.get("transfer-encoding") == "chunked":
        body_out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body_out += rest[:size]
            rest = rest[size + 2:]
        rest = body_out
    return status, out_headers, rest


# --- a collector served for real ------------------------------------------------------------------------

@dataclass
class Served:
    """A collector app served by aiohttp on 127.0.0.1 in a background event loop."""

    config: CollectorConfig
    port: int = 0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None
    runner: Any = None

    def start(self) -> Served:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            # As `halflife collect` serves it: the handler decompresses (and limits) bodies itself.
            self.runner = web.AppRunner(build_app(self.config), auto_decompress=False, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(serve())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="collector", daemon=True)
        self.thread.start()
        assert ready.wait(20), "the collector did not start"
        if failure:
            raise failure[0]
        return self

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.loop.is_running()

    def stop(self) -> None:
        if self.runner is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(20)
        self.loop.close()


COLLECTOR_KEY = "fuzz-write-key-7f3a"
COLLECTOR_SHARDS = 4

"""What flows out of the rule operators: trigger records, profile changes, end-of-input reports.

A trigger's `id` is a digest of (rule, contact, at, channel) so every sink can be
idempotent: re-delivery after a crash and resume carries the same id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from engine.times import format_time


def trigger_id(rule: str, contact: str, at_ms: int, channel: str) -> str:
    key = f"{rule}\x1f{contact}\x1f{at_ms}\x1f{channel}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def profile_change_id(rule: str, contact: str, at_ms: int, action: str, value: str) -> str:
    return trigger_id(rule, contact, at_ms, f"{action}:{value}")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def event_summary(event: dict, name: str | None, time_ms: int) -> dict[str, Any]:
    """The part of the causing event a trigger record carries."""
    out: dict[str, Any] = {
        "messageId": event.get("messageId"),
        "type": event.get("type") or "track",
        "event": name,
        "timestamp": format_time(time_ms),
        "properties": event.get("properties") or {},
    }
    traits = event.get("traits")
    if traits:
        out["traits"] = traits
    return out


class TriggerOut(NamedTuple):
    """One trigger record (one per channel), serialized once as a JSON line."""

    rule: str
    channel: str
    line: bytes
    at_ms: int = 0
    by_timer: bool = False  # fired by a timer (at a deadline), not by an event
    id: str = ""  # the record's id (also in `line`)


class ProfileOut(NamedTuple):
    """One profile change (`tag`, `untag`, `stage`) caused by a firing."""

    contact: str
    action: str
    value: str
    at_ms: int
    line: bytes


@dataclass(frozen=True)
class TriggerRecords:
    """The trigger records one shard batch produced, moved through the dataflow as one item."""

    records: list[TriggerOut]


@dataclass(frozen=True)
class ProfileRecords:
    """The profile changes and contact states one shard batch produced, as one item."""

    records: list[ProfileOut | ContactState]


def each_record(values: Iterable[Any]) -> Iterator[Any]:
    """The records among output values, a value being one record or a batch of them."""
    for value in values:
        if isinstance(value, (TriggerRecords, ProfileRecords)):
            yield from value.records
        else:
            yield value


@dataclass
class ShardEnd:
    """A shard's report at end of input (replay mode), sent to the end-of-input step."""

    pending: int
    contacts: int
    fired: dict[str, int]
    suppressed: dict[str, int]


class RecordWriter:
    """Writes a rule's trigger records and profile changes; the parts that depend only on the rule
    (its name and channels as JSON, the actions) are encoded once.

    Records are JSON objects with members in the SPEC's order (`id, rule, contact, at, emitted_at,
    channel, scores, event` and `id, contact, at, rule, action, value`); the causing event's summary
    goes in as the JSON it already is.
    """

    def __init__(self, rule: str, channels: tuple[str, ...], actions: tuple[tuple[str, str], ...]) -> None:
        self.rule = rule
        self.channels = channels
        self.actions = actions
        self._rule_json = orjson.dumps(rule)
        self._key = rule.encode("utf-8", "surrogatepass") + b"\x1f"
        self._channels = [(c, b"\x1f" + c.encode("utf-8", "surrogatepass"), orjson.dumps(c)) for c in channels]
        self._actions = [(action, value, b"\x1f" + f"{action}:{value}".encode("utf-8", "surrogatepass"),
                          b'","rule":%s,"action":%s,"value":%s}' % (self._rule_json, orjson.dumps(action),
                                                                   orjson.dumps(value)))
                         for action, value in actions]

    def triggers(self, contact: str, at_ms: int, at: bytes, scores: dict[str, float], event: bytes,
                 emitted_at: bytes, by_timer: bool = False) -> list[TriggerOut]:
        """One record per channel; `at`, `emitted_at` are ISO-8601 (`format_time`), `event` the summary's JSON."""
        contact_key = self._key + contact.encode("utf-8", "surrogatepass") + b"\x1f%d" % at_ms
        head = b'","rule":%s,"contact":%s,"at":"%s","emitted_at":"%s","channel":' % (
            self._rule_json, orjson.dumps(contact), at, emitted_at)
        tail = b',"scores":%s,"event":%s}' % (orjson.dumps(scores), event)
        out = []
        for channel, key, channel_json in self._channels:
            tid = hashlib.blake2b(contact_key + key, digest_size=16).hexdigest()
            out.append(TriggerOut(self.rule, channel, b'{"id":"%s%s%s%s' % (tid.encode(), head, channel_json, tail),
                                  at_ms, by_timer, tid))
        return out

    def profile(self, contact: str, at_ms: int, at: bytes) -> list[ProfileOut]:
        contact_key = self._key + contact.encode("utf-8", "surrogatepass") + b"\x1f%d" % at_ms
        middle = b'","contact":%s,"at":"%s' % (orjson.dumps(contact), at)
        return [ProfileOut(contact, action, value, at_ms,
                           b'{"id":"%s%s%s' % (hashlib.blake2b(contact_key + key, digest_size=16).hexdigest().encode(),
                                               middle, tail))
                for action, value, key, tail in self._actions]


def trigger_lines(rule: str, contact: str, at_ms: int, channels: tuple[str, ...], scores: dict[str, float],
                  event: bytes, emitted_ms: int, by_timer: bool = False) -> list[TriggerOut]:
    """One record per channel; `event` is the causing event's summary as JSON (`event_summary`)."""
    return RecordWriter(rule, channels, ()).triggers(contact, at_ms, format_time(at_ms).encode(), scores, event,
                                                     format_time(emitted_ms).encode(), by_timer)


def profile_lines(rule: str, contact: str, at_ms: int, actions: tuple[tuple[str, str], ...]) -> list[ProfileOut]:
    return RecordWriter(rule, (), actions).profile(contact, at_ms, format_time(at_ms).encode())


@dataclass(frozen=True)
class Watermark:
    """The input's watermark, broadcast to every shard so quiet shards fire timers too."""

    value: int


@dataclass(frozen=True)
class EndOfInput:
    """Sent by a replay source to every shard after its last event.

    `max_time` is the largest time among the accepted events of the whole input: every
    timer with a deadline <= it fires, later ones stay pending.
    """

    max_time: int


@dataclass(frozen=True)
class ReaderEnd:
    """A replay source partition's counters, sent to the end-of-input step."""

    partition: str
    events_in: int
    processed: int
    deduplicated: int
    dead_lettered: int
    dead_letter_reasons: dict[str, int]
    late: int
    max_time: int


@dataclass(frozen=True)
class ContactState:
    """A contact's scores (decayed to its clock) and last-seen time after a batch, for profile stores."""

    contact: str
    scores: dict[str, float]
    last_seen_ms: int

"""What flows out of the rule operators: trigger records, profile changes, end-of-input reports.

A trigger's `id` is a digest of (rule, contact, at, channel) so every sink can be
idempotent: re-delivery after a crash and resume carries the same id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
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


@dataclass(frozen=True, eq=False)
class TriggerRecords:
    """Trigger records as columns: what one shard batch produced, moved through the dataflow as one item.

    `data` holds the records as JSON lines, each followed by its newline: record i ends at `ends[i]`
    (after the newline) and starts where record i - 1 ends. Per record: `at_ms`, `by_timer`, and its
    rule and channel as indices into `rule_names` and `channel_names`. A sink that only writes lines
    takes `data` whole; iterating gives one `TriggerOut` per record.
    """

    data: bytes
    ends: np.ndarray
    at_ms: np.ndarray
    by_timer: np.ndarray
    rule: np.ndarray
    channel: np.ndarray
    rule_names: tuple[str, ...]
    channel_names: tuple[str, ...]

    @classmethod
    def of(cls, outs: Sequence[TriggerOut]) -> TriggerRecords:
        """The columns of records written one by one (`RecordWriter`)."""
        rules = tuple(dict.fromkeys(o.rule for o in outs))
        channels = tuple(dict.fromkeys(o.channel for o in outs))
        data = b"".join(o.line + b"\n" for o in outs)
        return cls(data, np.cumsum([len(o.line) + 1 for o in outs], dtype=np.int64),
                   np.array([o.at_ms for o in outs], np.int64), np.array([o.by_timer for o in outs], np.bool_),
                   np.array([rules.index(o.rule) for o in outs], np.int32),
                   np.array([channels.index(o.channel) for o in outs], np.int32), rules, channels)

    @classmethod
    def concat(cls, parts: Sequence[TriggerRecords]) -> TriggerRecords:
        """One item of several (all written for one rule plan)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        if any(p.rule_names != first.rule_names or p.channel_names != first.channel_names for p in parts):
            return cls.of([r for p in parts for r in p])
        bases = np.cumsum([0] + [len(p.data) for p in parts[:-1]])
        return cls(b"".join(p.data for p in parts), np.concatenate([p.ends + b for p, b in zip(parts, bases, strict=True)]),
                   np.concatenate([p.at_ms for p in parts]), np.concatenate([p.by_timer for p in parts]),
                   np.concatenate([p.rule for p in parts]), np.concatenate([p.channel for p in parts]),
                   first.rule_names, first.channel_names)

    def __len__(self) -> int:
        return len(self.ends)

    def line(self, i: int) -> bytes:
        """Record i's JSON, without its newline."""
        start = int(self.ends[i - 1]) if i else 0
        return self.data[start:int(self.ends[i]) - 1]

    def __iter__(self) -> Iterator[TriggerOut]:
        data = self.data
        ends = self.ends.tolist()
        starts = [0, *ends[:-1]] if ends else []
        for start, end, at, timer, rule, channel in zip(starts, ends, self.at_ms.tolist(),
                                                        self.by_timer.tolist(), self.rule.tolist(),
                                                        self.channel.tolist(), strict=True):
            line = data[start:end - 1]
            yield TriggerOut(self.rule_names[rule], self.channel_names[channel], line, at, timer,
                             line[7:39].decode("ascii"))

    @property
    def records(self) -> list[TriggerOut]:
        return list(self)


@dataclass(frozen=True)
class ProfileRecords:
    """The profile changes and contact states one shard batch produced, as one item."""

    records: list[ProfileOut | ContactState]


def each_record(values: Iterable[Any]) -> Iterator[Any]:
    """The records among output values, a value being one record or a batch of them."""
    for value in values:
        if isinstance(value, TriggerRecords):
            yield from value
        elif isinstance(value, ProfileRecords):
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

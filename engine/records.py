"""What flows out of the rule operators: trigger records, profile changes, end-of-input reports.

A trigger's `id` is a digest of (rule, contact, at, channel) so every sink can be
idempotent: re-delivery after a crash and resume carries the same id.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class TriggerOut:
    """One trigger record (one per channel), serialized once as a JSON line."""

    rule: str
    channel: str
    line: bytes
    at_ms: int = 0
    by_timer: bool = False  # fired by a timer (at a deadline), not by an event


@dataclass(frozen=True)
class ProfileOut:
    """One profile change (`tag`, `untag`, `stage`) caused by a firing."""

    contact: str
    action: str
    value: str
    at_ms: int
    line: bytes


@dataclass
class ShardEnd:
    """A shard's report at end of input (replay mode), sent to the end-of-input step."""

    pending: int
    contacts: int
    fired: dict[str, int]
    suppressed: dict[str, int]


def trigger_lines(rule: str, contact: str, at_ms: int, channels: tuple[str, ...], scores: dict[str, float],
                  event: dict[str, Any], emitted_ms: int, by_timer: bool = False) -> list[TriggerOut]:
    at = format_time(at_ms)
    emitted_at = format_time(emitted_ms)
    out = []
    for channel in channels:
        record = {
            "id": trigger_id(rule, contact, at_ms, channel),
            "rule": rule,
            "contact": contact,
            "at": at,
            "emitted_at": emitted_at,
            "channel": channel,
            "scores": scores,
            "event": event,
        }
        out.append(TriggerOut(rule, channel, orjson.dumps(record), at_ms, by_timer))
    return out


def profile_lines(rule: str, contact: str, at_ms: int, actions: tuple[tuple[str, str], ...]) -> list[ProfileOut]:
    at = format_time(at_ms)
    return [
        ProfileOut(contact, action, value, at_ms, orjson.dumps({
            "id": profile_change_id(rule, contact, at_ms, action, value),
            "contact": contact,
            "at": at,
            "rule": rule,
            "action": action,
            "value": value,
        }))
        for action, value in actions
    ]


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

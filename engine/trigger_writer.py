"""Trigger records written in compiled code, all the firings of a shard batch at once.

`RecordWriter` (engine/records.py) writes one firing's records in Python: the id's BLAKE2b, the
contact and the scores as JSON, the parts joined as bytes. At the 5 % of events that fire something
that was a third of the rule stage. `TriggerWriter` writes the same bytes for a whole `Firings`
table in one kernel: the parts that depend only on the rules are encoded once, events are written
from their packed summaries (engine/summaries.py), ids are hashed by
engine/blake2.py, contact ids are escaped as orjson escapes them (tests/engine/test_trigger_writer.py
holds the two writers to the same bytes), and the score values, the one part a kernel cannot format
the way orjson does (the shortest text that reads back as the same double), come from a single
`orjson.dumps` of all of the batch's values.

The result is a columnar `TriggerRecords`: the records as JSON lines in one buffer, and per record
its rule, channel, event time and whether a timer fired it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import orjson

from engine.blake2 import blake2b_128_hex
from engine.compiled import kernel
from engine.rawmem import copy_bytes
from engine.records import TriggerRecords
from engine.summaries import JSON_OVERHEAD, kept_json, write_json
from engine.times import format_iso_bytes

__all__ = ["TriggerWriter"]

# The records' fixed text, in the order written (SPEC §4: id, rule, contact, at, emitted_at, channel,
# scores, event).
_PARTS = [b'{"id":"', b'","rule":', b',"contact":', b',"at":"', b'","emitted_at":"', b'","channel":', b',"scores":',
          b',"event":', b"}\n", b"{}"]
(_ID, _RULE, _CONTACT, _AT, _EMITTED, _CHANNEL, _SCORES, _EVENT, _END, _NO_SCORES) = range(len(_PARTS))
# Bytes a record may take beyond its variable parts: the fixed text, the id, two times, the id key's
# separators and the at decimal (20 digits).
_FIXED_BYTES = sum(len(p) for p in _PARTS) + 32 + 24 + 24
# The longest text orjson writes for a double: -1.7976931348623157e+308 (24), plus the separator.
_SCORE_BYTES = 25


def _table(parts: Sequence[bytes]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Byte strings end to end and the offsets between them: part k is table[offsets[k]:offsets[k + 1]]."""
    return (np.frombuffer(b"".join(parts) or b"\0", np.uint8).copy(),
            np.cumsum([0] + [len(p) for p in parts]).astype(np.int64))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class TriggerWriter:
    """Writes the trigger records of a rule plan's firings (see the module docstring).

    `triggers`: per trigger index, its name and its channels (a trigger without channels writes no
    record); `score_names`: the scores, in the order of the firings' score values.
    """

    def __init__(self, triggers: Sequence[tuple[str, tuple[str, ...]]], score_names: Sequence[str]) -> None:
        self.rule_names = tuple(name for name, _ in triggers)
        channel_names: list[str] = []
        first = [0]
        ids: list[int] = []
        for _, channels in triggers:
            for c in channels:
                if c not in channel_names:
                    channel_names.append(c)
                ids.append(channel_names.index(c))
            first.append(len(ids))
        self.channel_names = tuple(channel_names)
        self.n_scores = len(score_names)
        self.emits = bool(ids)
        score_parts = [_utf8(("{" if s == 0 else ",") + orjson.dumps(name).decode() + ":")
                       for s, name in enumerate(score_names)] + [b"}"]
        self._tables = (
            _table(_PARTS),
            _table([_utf8(name) + b"\x1f" for name, _ in triggers]),  # the id key's rule part
            _table([orjson.dumps(name) for name, _ in triggers]),
            np.array(first, np.int64), np.array(ids or [0], np.int64),
            _table([b"\x1f" + _utf8(c) for c in channel_names]),  # the id key's channel part
            _table([orjson.dumps(c) for c in channel_names]),
            _table(score_parts),
        )
        self._longest_rule = max((len(_utf8(n)) * 2 + 2 for n, _ in triggers), default=0)
        self._longest_channel = max((len(_utf8(c)) * 2 + 2 for c in channel_names), default=0)
        self._channels_of = np.diff(np.array(first, np.int64))
        # The most a record takes beyond its contact id (escaped: 6 bytes per byte at most) and its event.
        self._record_bytes = (_FIXED_BYTES + self._longest_rule + self._longest_channel + JSON_OVERHEAD
                              + (_SCORE_BYTES + 2) * self.n_scores + len(self._tables[7][0]))
        self._hash_scratch = np.zeros(40, np.uint64)

    def write(self, trigger: npt.NDArray[np.int32], slot: npt.NDArray[np.int32], at: npt.NDArray[np.int64],
              by_timer: npt.NDArray[np.uint8], source: npt.NDArray[np.uint8], event_start: npt.NDArray[np.int64],
              event_length: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], events: npt.NDArray[np.uint8],
              kept: npt.NDArray[np.uint8], shared: npt.NDArray[np.uint8], id_data: npt.NDArray[np.uint8],
              id_offsets: npt.NDArray[np.uint32], emitted_at: bytes) -> TriggerRecords:
        """The records of firings i: trigger[i] fired for the contact in `slot[i]` at `at[i]`, with score
        values scores[i]; its event's packed summary is at event_start[i] (event_length[i] bytes) in `events`
        (the batch's summaries) when source[i] is 0; when it is 1, a kept summary in `kept` (the events timers
        keep, their shared parts in `shared`), and event_length[i] is its length as a packed summary.
        Contact ids are id_data[id_offsets[s]:id_offsets[s + 1]]; `emitted_at` is ISO-8601 (24 bytes)."""
        total, bound, longest_contact = _sizes(trigger, slot, event_length, id_offsets, self._channels_of,
                                               self._record_bytes)
        out = np.empty(bound, np.uint8)
        ends = np.empty(total, np.int64)
        out_at = np.empty(total, np.int64)
        out_timer = np.empty(total, np.bool_)
        out_rule = np.empty(total, np.int32)
        out_channel = np.empty(total, np.int32)
        values = np.frombuffer(orjson.dumps(scores[:, :self.n_scores].ravel().tolist()), np.uint8)
        key = np.empty(self._longest_rule + self._longest_channel + longest_contact + 24, np.uint8)
        written = _write_records(trigger, slot, at, by_timer, source, event_start, event_length, values, self.n_scores,
                                 events, kept, shared, id_data, id_offsets, np.frombuffer(emitted_at, np.uint8), self._tables,
                                 key, self._hash_scratch, out, ends, out_at, out_timer, out_rule, out_channel)
        assert written == total
        used = int(ends[-1]) if total else 0
        return TriggerRecords(out[:used].tobytes(), ends, out_at, out_timer, out_rule, out_channel, self.rule_names,
                              self.channel_names)


# -- compiled part ------------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8).copy()


@kernel(inline=True)
def _put(table, offsets, k, out, pos):  # type: ignore[no-untyped-def]
    return copy_bytes(out, pos, table, offsets[k], offsets[k + 1] - offsets[k])


@kernel
def _sizes(trigger, slot, event_length, id_offsets, channels_of, record_bytes):  # type: ignore[no-untyped-def]
    """(records, a bound on their bytes, the longest contact id's bytes) of a batch of firings."""
    records = 0
    total = 0
    longest = 0
    for i in range(len(trigger)):
        n = channels_of[trigger[i]]
        contact = np.int64(id_offsets[slot[i] + 1]) - np.int64(id_offsets[slot[i]])  # (uint32s: max() would give a float)
        longest = max(longest, contact)
        records += n
        total += n * (record_bytes + 6 * contact + event_length[i])
    return records, total, longest


@kernel(inline=True)
def _json_string(src, s, e, out, pos):  # type: ignore[no-untyped-def]
    """src[s:e] (UTF-8) as a JSON string, escaped as orjson escapes: the quote, the backslash, and
    control characters (\\b \\t \\n \\f \\r by name, the others as \\u00xx); returns the position after it."""
    hexd = _HEX
    out[pos] = 34
    pos += 1
    for i in range(s, e):
        c = src[i]
        if c >= 32 and c != 34 and c != 92:
            out[pos] = c
            pos += 1
            continue
        out[pos] = 92
        if c == 34 or c == 92:
            out[pos + 1] = c
            pos += 2
        elif c == 8 or c == 9 or c == 10 or c == 12 or c == 13:
            out[pos + 1] = 98 if c == 8 else 116 if c == 9 else 110 if c == 10 else 102 if c == 12 else 114
            pos += 2
        else:
            out[pos + 1] = 117
            out[pos + 2] = 48
            out[pos + 3] = 48
            out[pos + 4] = hexd[c >> 4]
            out[pos + 5] = hexd[c & 15]
            pos += 6
    out[pos] = 34
    return pos + 1


@kernel(inline=True)
def _decimal(v, out, pos):  # type: ignore[no-untyped-def]
    """The decimal digits of v >= 0 at out[pos:]; returns the position after them."""
    digits = 1
    rest = v // 10
    while rest > 0:
        digits += 1
        rest //= 10
    for j in range(digits - 1, -1, -1):
        out[pos + j] = 48 + v % 10
        v //= 10
    return pos + digits


@kernel
def _write_records(trigger, slot, at, by_timer, source, event_start, event_length, values, n_scores,  # type: ignore[no-untyped-def]
                   events, kept, shared, id_data, id_offsets, emitted, tables, key, hash_scratch, out, ends, out_at, out_timer,
                   out_rule, out_channel):
    """One record per (firing, channel of its trigger), in order; returns how many."""
    ((parts, part_offsets), (rule_keys, rule_key_offsets), (rule_jsons, rule_json_offsets), chan_first, chan_ids,
     (chan_keys, chan_key_offsets), (chan_jsons, chan_json_offsets), (score_parts, score_part_offsets)) = tables
    pos = 0
    k = 0
    v = 1  # the score values' text: "[a,b,...]" for n_scores values per firing
    for i in range(len(trigger)):
        t = trigger[i]
        if chan_first[t + 1] == chan_first[t]:
            if n_scores:  # skip this firing's values
                for _ in range(n_scores):
                    while values[v] != 44 and values[v] != 93:
                        v += 1
                    v += 1
            continue
        cs = np.int64(id_offsets[slot[i]])
        ce = np.int64(id_offsets[slot[i] + 1])
        # The id key up to the channel: rule \x1f contact \x1f at \x1f ...
        key_end = _put(rule_keys, rule_key_offsets, t, key, 0)
        key_end = copy_bytes(key, key_end, id_data, cs, ce - cs)
        key[key_end] = 31
        key_end = _decimal(at[i], key, key_end + 1)
        value_start = v
        for c in range(chan_first[t], chan_first[t + 1]):
            channel = chan_ids[c]
            key_len = _put(chan_keys, chan_key_offsets, channel, key, key_end)
            pos = _put(parts, part_offsets, _ID, out, pos)
            pos = blake2b_128_hex(key, 0, key_len, hash_scratch, out, pos)
            pos = _put(parts, part_offsets, _RULE, out, pos)
            pos = _put(rule_jsons, rule_json_offsets, t, out, pos)
            pos = _put(parts, part_offsets, _CONTACT, out, pos)
            pos = _json_string(id_data, cs, ce, out, pos)
            pos = _put(parts, part_offsets, _AT, out, pos)
            pos = format_iso_bytes(at[i], out, pos)
            pos = _put(parts, part_offsets, _EMITTED, out, pos)
            pos = copy_bytes(out, pos, emitted, 0, len(emitted))
            pos = _put(parts, part_offsets, _CHANNEL, out, pos)
            pos = _put(chan_jsons, chan_json_offsets, channel, out, pos)
            pos = _put(parts, part_offsets, _SCORES, out, pos)
            if n_scores == 0:
                pos = _put(parts, part_offsets, _NO_SCORES, out, pos)
            else:
                v = value_start
                for s in range(n_scores):
                    pos = _put(score_parts, score_part_offsets, s, out, pos)
                    start = v
                    while values[v] != 44 and values[v] != 93:
                        v += 1
                    pos = copy_bytes(out, pos, values, start, v - start)
                    v += 1
                pos = _put(score_parts, score_part_offsets, n_scores, out, pos)
            pos = _put(parts, part_offsets, _EVENT, out, pos)
            if source[i] == 0:
                pos = write_json(events, event_start[i], out, pos)
            else:
                pos = kept_json(kept, event_start[i], shared, out, pos)
            pos = _put(parts, part_offsets, _END, out, pos)
            ends[k] = pos
            out_at[k] = at[i]
            out_timer[k] = by_timer[i] != 0
            out_rule[k] = t
            out_channel[k] = channel
            k += 1
    return k

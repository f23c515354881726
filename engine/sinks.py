"""Replay outputs: JSON Lines files whose resume state is the file offset.

Like bytewax's own FileSink, the single partition truncates the file to the offset of
the last snapshot when it resumes, so lines written after that snapshot (and emitted
again by the replay) appear once. `-` writes to stdout, which cannot be rewound: use a
file when running with `--recovery`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, BinaryIO

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from engine import metrics
from engine.records import TriggerRecords, each_record


def as_lines(values: Any) -> tuple[bytes, int]:
    """The JSON lines of output items, each with its newline, and how many: trigger records as the
    lines they already are, other records and dead letters one by one (`as_line`)."""
    parts: list[bytes] = []
    count = 0
    for value in values:
        if isinstance(value, TriggerRecords):
            parts.append(value.data)
            count += len(value)
        else:
            for record in each_record([value]):
                parts.append(as_line(record) + b"\n")
                count += 1
    return b"".join(parts), count


def as_line(value: Any) -> bytes:
    """The JSON line of an output item: bytes as they are, records by their `line`, dead letters as JSON."""
    if isinstance(value, bytes):
        return value
    line = getattr(value, "line", None)
    if isinstance(line, bytes):
        return line
    return value.to_json()


class _FilePartition(StatefulSinkPartition[Any, int]):
    def __init__(self, path: str, resume_offset: int | None) -> None:
        exists = os.path.exists(path)
        if exists and not os.path.isfile(path):  # /dev/null, a FIFO: nothing to rewind
            self.file: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed in close()
            return
        self.file = open(path, "r+b" if exists else "wb")  # noqa: SIM115 - closed in close()
        offset = resume_offset or 0
        self.file.truncate(offset)
        self.file.seek(offset)

    def write_batch(self, items: list[Any]) -> None:
        data, count = as_lines(items)
        self.file.write(data)
        metrics.SINK_WRITES.labels("file").inc(count)
        self.file.flush()  # readers (and `tail -f`) see triggers as they fire

    def snapshot(self) -> int:
        self.file.flush()
        return self.file.tell() if self.file.seekable() else 0

    def close(self) -> None:
        self.file.close()


class JsonLinesFileSink(FixedPartitionedSink[bytes, int]):
    """Items are `(any key, value)` (see `as_line`); all go to the one file partition."""

    def __init__(self, path: str) -> None:
        self.path = path
        metrics.declare_sink("file")

    def list_parts(self) -> list[str]:
        return [self.path]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(self.path, resume_state)


class _StreamPartition(StatelessSinkPartition[Any]):
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write_batch(self, items: list[Any]) -> None:
        self.stream.write(as_lines(v for _, v in items)[0])
        self.stream.flush()


class StdStreamSink(DynamicSink[bytes]):
    """Items are `(any key, value)` (see `as_line`), written to stdout or stderr.

    Not rewindable: at-least-once across a resume.
    """

    def __init__(self, which: str = "stdout") -> None:
        self.which = which

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StreamPartition:
        return _StreamPartition(sys.stdout.buffer if self.which == "stdout" else sys.stderr.buffer)


def line_sink(target: str) -> FixedPartitionedSink | DynamicSink:
    """`-` is stdout, `stderr` is stderr, anything else a file path."""
    if target == "-":
        return StdStreamSink("stdout")
    if target == "stderr":
        return StdStreamSink("stderr")
    return JsonLinesFileSink(target)

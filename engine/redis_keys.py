"""The Redis layout of SPEC §6, in one place (default prefix `hl:`).

    {p}events:{i}          shard i's event stream; entry field `events` = newline-joined JSON events
    {p}triggers            every trigger record (field `data`)
    {p}triggers:{channel}  the records of one channel (field `data`)
    {p}webhooks:failed     webhook deliveries that failed for good (fields `data`, `channel`, `error`)
    {p}trigger-id:{id}     idempotency ledger: set once per trigger id, expires after the retention
    {p}dlq                 dead letters (fields `reason`, `detail`, `raw`)
    {p}contact:{id}        profile hash: scores (JSON), stage, last_seen
    {p}tag:{name}          set of contacts carrying a tag
    {p}config              hash written by the collector: `shards` (the engine refuses a mismatch)

All keys of one kind share a prefix so a Redis Cluster deployment can place them with
hash tags later; today every key is independent (no multi-key command spans shards).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "hl:"

    def events(self, shard: int) -> str:
        return f"{self.prefix}events:{shard}"

    @property
    def triggers(self) -> str:
        return f"{self.prefix}triggers"

    def channel(self, channel: str) -> str:
        return f"{self.prefix}triggers:{channel}"

    @property
    def failed(self) -> str:
        return f"{self.prefix}webhooks:failed"

    def trigger_id(self, trigger_id: str) -> str:
        return f"{self.prefix}trigger-id:{trigger_id}"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}dlq"

    def contact(self, contact: str) -> str:
        return f"{self.prefix}contact:{contact}"

    def tag(self, name: str) -> str:
        return f"{self.prefix}tag:{name}"

    @property
    def config(self) -> str:
        return f"{self.prefix}config"

"""Property test: random sequences of hot-tier operations against an in-memory model.

After every step, each thread's list, ledger and state must equal the model's,
and the ledger must point every listed id at its exact position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from storage import HotStore, ThreadExists, ThreadNotFound
from storage.embedded import EmbeddedRedis

THREADS = ["a", "b", "c"]
IDS = [f"m{i}" for i in range(12)]

ids = st.sampled_from(IDS)
threads = st.sampled_from(THREADS)
bodies = st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none())
messages = st.builds(lambda i, b: {"id": i, "body": b}, ids, bodies)


@dataclass
class ModelThread:
    records: list[dict[str, Any]] = field(default_factory=list)
    retired: set[str] = field(default_factory=set)
    state: dict[str, Any] = field(default_factory=dict)
    fork_of: tuple[str, str] | None = None

    @property
    def listed(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def seen(self) -> set[str]:
        return set(self.listed) | self.retired


class HotStoreMachine(RuleBasedStateMachine):
    client: redis.Redis

    @initialize()
    def reset(self) -> None:
        self.client.flushall()
        self.store = HotStore(self.client, namespace="prop")
        self.model: dict[str, ModelThread] = {}

    @rule(tid=threads)
    def create(self, tid: str) -> None:
        created = self.store.create(tid)
        assert created == (tid not in self.model)
        self.model.setdefault(tid, ModelThread())

    @rule(tid=threads, batch=st.lists(messages, max_size=6))
    def append(self, tid: str, batch: list[dict[str, Any]]) -> None:
        if tid not in self.model:
            with pytest.raises(ThreadNotFound):
                self.store.append(tid, batch)
            return
        thread = self.model[tid]
        expected = []
        for m in batch:
            if m["id"] not in thread.seen:
                thread.records.append(m)
                expected.append(m["id"])
        assert self.store.append(tid, batch).appended_ids == tuple(expected)

    @precondition(lambda self: any(t.records for t in self.model.values()))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """Redeliver a slice of what a thread already holds: nothing may change."""
        tid = data.draw(st.sampled_from([t for t, m in self.model.items() if m.records]))
        records = self.model[tid].records
        start = data.draw(st.integers(0, len(records) - 1))
        result = self.store.append(tid, records[start:])
        assert result.appended_ids == ()

    @rule(tid=threads, mid=ids)
    def truncate(self, tid: str, mid: str) -> None:
        if tid not in self.model:
            return
        thread = self.model[tid]
        removed: list[str] = []
        if mid in thread.listed:
            pos = thread.listed.index(mid)
            removed = thread.listed[pos:]
            thread.records = thread.records[:pos]
        assert self.store.truncate_from(tid, mid).removed_ids == tuple(removed)

    @rule(src=threads, dst=threads, up_to=st.one_of(st.none(), ids))
    def fork(self, src: str, dst: str, up_to: str | None) -> None:
        if src == dst or src not in self.model:
            return
        source = self.model[src]
        if up_to is not None and up_to not in source.listed:
            return
        if dst in self.model:
            if self.model[dst].fork_of == (src, up_to or ""):
                assert self.store.fork(src, dst, up_to).created is False
            else:
                with pytest.raises(ThreadExists):
                    self.store.fork(src, dst, up_to)
            return
        cut = len(source.records) if up_to is None else source.listed.index(up_to) + 1
        self.model[dst] = ModelThread(
            records=list(source.records[:cut]),
            retired=set(source.retired),
            state=dict(source.state),
            fork_of=(src, up_to or ""),
        )
        assert self.store.fork(src, dst, up_to).created is True

    @rule(tid=threads, batch=st.lists(messages, max_size=5, unique_by=lambda m: m["id"]))
    def replace(self, tid: str, batch: list[dict[str, Any]]) -> None:
        if tid not in self.model:
            return
        thread = self.model[tid]
        thread.retired = thread.seen - {m["id"] for m in batch}
        thread.records = list(batch)
        self.store.replace_all(tid, batch)

    @rule(tid=threads, value=st.integers(0, 3))
    def save_state(self, tid: str, value: int) -> None:
        if tid not in self.model:
            return
        self.model[tid].state = {"v": value}
        self.store.save_state(tid, {"v": value})

    @rule(tid=threads)
    def delete(self, tid: str) -> None:
        assert self.store.delete(tid) == (tid in self.model)
        self.model.pop(tid, None)

    @invariant()
    def hot_store_matches_model(self) -> None:
        for tid in THREADS:
            if tid not in self.model:
                assert not self.store.exists(tid)
                continue
            thread = self.model[tid]
            assert self.store.load(tid) == thread.records
            assert self.store.load_state(tid) == thread.state
            ledger = {
                k.decode(): int(v) for k, v in self.client.hgetall(self.store.keys(tid).ids).items()
            }
            listed = {mid: pos for pos, mid in enumerate(thread.listed)}
            assert {k: v for k, v in ledger.items() if v >= 0} == listed
            assert {k for k, v in ledger.items() if v < 0} == thread.retired


def test_random_operation_sequences_keep_list_ledger_and_state_consistent(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis_server.client()
    HotStoreMachine.client = client
    try:
        run_state_machine_as_test(
            HotStoreMachine,
            settings=settings(
                max_examples=150,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        client.close()

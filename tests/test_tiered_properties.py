"""Property test: random sequences of tiered operations against an in-memory model.

``storage.Threads`` over a real redis-server and a real cold store (files, and S3
over moto's HTTP server). The model encodes the storage's documented semantics,
read from ``storage/lua/*.lua`` and ``storage/tiered.py``:

* the dedup ledger: an id is skipped while it is listed or *retired*; ``replace_all``
  retires every id that leaves the list (a late redelivery cannot bring it back),
  ``truncate_from`` *forgets* the ids it drops (a rewind may append them again);
* ``upsert`` appends ids the ledger does not hold (forgotten ones too), replaces a
  listed id named in ``replace`` when its record differs, and skips every other id;
* ``version`` is 1 after create/fork and +1 per mutation that changed something;
* ``fork`` copies the records up to and including ``up_to_id``, the whole ledger
  (retired ids stay retired, listed ids past the cut are forgotten) and the state;
  ``open(dst, "fork")`` hydrates an existing ``dst`` and answers "existing" for the
  same (source, fork point), ``ThreadExists`` otherwise; a cold source is hydrated;
* ``flush`` uploads only when the version moved since the last archive, and evicts
  when asked (no leases here, and ``write_pin_ms=0``: a pin is a timing matter);
  every tier-transparent call on a cold thread, ``open(.., "new")`` of a cold id and
  ``open(dst, "fork")`` make the thread hot again;
* ``delete`` removes both tiers; a restore of a state equal to ``{}`` leaves no state
  key (so a later ``save_state({})`` is a change again).

After every step: each live thread reads back equal to the model in whichever tier
it is (hot: its list, ledger, state, version; cold: the archived snapshot), with no
duplicate ids; every other thread id raises ``ThreadNotFound`` and exists in no tier.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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

from storage import HotStore, InvalidMessage, ThreadExists, ThreadNotFound
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads

NAMESPACE = "tprop"
THREADS = ["t-a", "t-b", "t-c", "t-d"]
SEEDED = THREADS[:3]  # "t-d" starts absent: a fork or create target
POOL_IDS = [f"m{i}" for i in range(8)]

thread_ids = st.sampled_from(THREADS)
pool_ids = st.sampled_from(POOL_IDS)
bodies = st.one_of(
    st.integers(-3, 3),
    st.text(max_size=4),
    st.none(),
    st.builds(lambda c: {"role": "user", "content": c}, st.text(max_size=4)),
)
states = st.one_of(
    st.just({}),
    st.builds(lambda v: {"v": v}, st.integers(0, 2)),
    st.just({"tasks": ["plan", "act"], "custom": {"k": None}}),
)
# None in a batch stands for a fresh id (never seen by any thread).
batch_items = st.lists(st.tuples(st.one_of(st.none(), pool_ids), bodies), max_size=5)


def encoded(value: Any) -> bytes:
    """The product's canonical JSON encoding (storage.records._dumps)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def lrange(items: list[Any], start: int, stop: int) -> list[Any]:
    """Redis LRANGE semantics (inclusive stop, negative from the end, clamped)."""
    n = len(items)
    start = max(n + start, 0) if start < 0 else start
    stop = n + stop if stop < 0 else min(stop, n - 1)
    return items[start : stop + 1] if start <= stop else []


@dataclass
class ModelThread:
    records: list[dict[str, Any]] = field(default_factory=list)
    retired: set[str] = field(default_factory=set)
    forgotten: set[str] = field(default_factory=set)
    """Ids dropped by truncate_from and not appended since: a redelivery appends them."""
    state: dict[str, Any] | None = None
    """The raw state slice: None when no state key exists (loads as {})."""
    version: int = 1
    fork_of: tuple[str, str | None] | None = None
    hot: bool = True
    archived: bool = False
    dirty: bool = True
    """The version moved since the last archive (a flush uploads)."""

    @property
    def listed(self) -> list[str]:
        return [r["id"] for r in self.records]

    @property
    def seen(self) -> set[str]:
        return set(self.listed) | self.retired

    def bump(self) -> None:
        self.version += 1
        self.dirty = True

    def make_hot(self) -> None:
        """A restore from the archive: an empty state slice comes back as no key."""
        if not self.hot and self.state == {}:
            self.state = None
        self.hot = True


class TieredMachine(RuleBasedStateMachine):
    client: ClassVar[redis.Redis]
    make_cold: ClassVar[Callable[[], ColdStore]]

    @initialize(
        seeds=st.lists(
            st.tuples(batch_items, st.one_of(st.none(), states), st.booleans(), st.booleans()),
            min_size=len(SEEDED),
            max_size=len(SEEDED),
        )
    )
    def reset(self, seeds: list[tuple[Any, dict[str, Any] | None, bool, bool]]) -> None:
        """Empty tiers, then most thread ids live with a few messages (some compacted,
        so they have retired ids; some already evicted to the cold tier), so that the
        rules mostly act on real threads in both tiers (unknown ids are still drawn)."""
        self.client.flushdb()
        self.cold = self.make_cold()
        self.threads = Threads(
            HotStore(self.client, namespace=NAMESPACE), self.cold, write_pin_ms=0
        )
        self.model: dict[str, ModelThread] = {}
        self.fresh = 0
        for tid, (items, state, compact, evict) in zip(SEEDED, seeds, strict=True):
            assert self.threads.open(tid, "new", state=state) == "created"
            thread = self.model[tid] = ModelThread(state=state)
            batch = self.messages(items)
            expected = self.expect_append(thread, batch)
            result = self.threads.append(tid, batch)
            assert (result.appended_ids, result.skipped_ids, result.length) == expected[:3]
            if compact and thread.records:  # summary replaces the first message
                compacted = [{"id": self.fresh_id(), "body": "summary"}, *thread.records[1:]]
                assert self.threads.replace_all(tid, compacted).changed
                thread.retired = thread.seen - {m["id"] for m in compacted}
                thread.records = compacted
                thread.bump()
            if evict:
                assert self.threads.flush(tid).evicted
                thread.dirty, thread.archived, thread.hot = False, True, False

    # -- helpers ----------------------------------------------------------------

    def pick(self, data: st.DataObject, label: str = "thread", *, absent: bool = False) -> str:
        """A thread id: mostly a live one (or, with ``absent``, mostly one that is not
        live), sometimes any at all."""
        wanted = sorted(t for t in THREADS if (t in self.model) is not absent)
        if wanted and data.draw(st.integers(0, 3), label=f"{label} from {wanted}"):
            return data.draw(st.sampled_from(wanted), label=label)
        return data.draw(thread_ids, label=label)

    def message_id(self, thread: ModelThread | None, *, none: bool = False) -> Any:
        """Mostly an id listed in ``thread``; else a retired, pool or (if asked) no id."""
        others = sorted({*POOL_IDS, *(thread.retired if thread else ())})
        anything = st.sampled_from([None, *others] if none else others)
        if thread is None or not thread.records:
            return anything
        return st.one_of(st.sampled_from(thread.listed), anything)

    def fresh_id(self) -> str:
        self.fresh += 1
        return f"n{self.fresh}"

    def messages(self, items: list[tuple[str | None, Any]]) -> list[dict[str, Any]]:
        return [{"id": mid or self.fresh_id(), "body": body} for mid, body in items]

    def touch(self, tid: str) -> ModelThread | None:
        """A tier-transparent call on ``tid``: hydrates it if it is cold."""
        thread = self.model.get(tid)
        if thread is not None:
            thread.make_hot()
        return thread

    def expect_append(self, thread: ModelThread, batch: list[dict[str, Any]]) -> tuple[Any, ...]:
        appended, skipped = [], []
        for message in batch:
            if message["id"] in thread.seen:
                skipped.append(message["id"])
            else:
                thread.records.append(message)
                thread.forgotten.discard(message["id"])
                appended.append(message["id"])
        if appended:
            thread.bump()
        return tuple(appended), tuple(skipped), len(thread.records), thread.version

    # -- lifecycle ----------------------------------------------------------------

    @rule(state=st.one_of(st.none(), states), data=st.data())
    def open_new(self, state: dict[str, Any] | None, data: st.DataObject) -> None:
        tid = self.pick(data, absent=True)
        thread = self.touch(tid)  # a cold id is hydrated by the check, then refused
        if thread is not None:
            with pytest.raises(ThreadExists):
                self.threads.open(tid, "new", state=state)
            return
        assert self.threads.open(tid, "new", state=state) == "created"
        self.model[tid] = ModelThread(state=state)

    @rule(tid=thread_ids)
    def delete(self, tid: str) -> None:
        assert self.threads.delete(tid) is (tid in self.model)
        self.model.pop(tid, None)

    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        src = self.pick(data, "source")
        dst = self.pick(data, "destination", absent=True)
        source = self.model.get(src)
        up_to = data.draw(self.message_id(source, none=True), label="up_to_id")
        call = lambda: self.threads.open(dst, "fork", source=src, up_to_id=up_to)  # noqa: E731
        if dst in self.model:
            destination = self.touch(dst)
            assert destination is not None
            if destination.fork_of == (src, up_to):
                assert call() == "existing"
            else:
                with pytest.raises(ThreadExists):
                    call()
            return
        if source is None:
            with pytest.raises(ThreadNotFound):
                call()
            return
        source.make_hot()  # hydrated before the fork script runs
        if up_to is not None and up_to not in source.listed:  # unknown or retired
            with pytest.raises(InvalidMessage):
                call()
            return
        cut = len(source.records) if up_to is None else source.listed.index(up_to) + 1
        self.model[dst] = ModelThread(
            records=list(source.records[:cut]),
            retired=set(source.retired),
            # ids past the cut (and those the source forgot) are not in the fork's ledger
            forgotten=set(source.listed[cut:]) | source.forgotten,
            state=None if source.state is None else dict(source.state),
            fork_of=(src, up_to),
        )
        assert call() == "forked"

    @precondition(lambda self: any(t.fork_of for t in self.model.values()))
    @rule(data=st.data())
    def redeliver_fork(self, data: st.DataObject) -> None:
        """The same fork again (a redelivered task), in whichever tier the fork is now."""
        dst = data.draw(st.sampled_from(sorted(t for t, m in self.model.items() if m.fork_of)))
        destination = self.touch(dst)
        assert destination is not None
        assert destination.fork_of is not None
        src, up_to = destination.fork_of
        assert self.threads.open(dst, "fork", source=src, up_to_id=up_to) == "existing"

    # -- messages -------------------------------------------------------------------

    @rule(items=batch_items, data=st.data())
    def append(self, items: list[tuple[str | None, Any]], data: st.DataObject) -> None:
        tid = self.pick(data)
        batch = self.messages(items)
        thread = self.touch(tid)
        if thread is None:
            with pytest.raises(ThreadNotFound):
                self.threads.append(tid, batch)
            return
        expected = self.expect_append(thread, batch)
        result = self.threads.append(tid, batch)
        assert (result.appended_ids, result.skipped_ids, result.length, result.version) == expected

    @precondition(lambda self: any(t.seen or t.forgotten for t in self.model.values()))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """A late or repeated delivery of ids the thread has seen: listed and retired
        ids are skipped, ids a truncate forgot are appended again."""
        tid = data.draw(
            st.sampled_from([t for t, m in self.model.items() if m.seen or m.forgotten]),
            label="thread",
        )
        thread = self.model[tid]
        old = sorted(thread.seen | thread.forgotten)
        chosen = data.draw(st.lists(st.sampled_from(old), min_size=1, max_size=6), label="ids")
        batch = [{"id": mid, "body": f"again {mid}"} for mid in chosen]
        self.touch(tid)
        expected = self.expect_append(thread, batch)
        result = self.threads.append(tid, batch)
        assert (result.appended_ids, result.skipped_ids, result.length, result.version) == expected

    @rule(data=st.data())
    def upsert(self, data: st.DataObject) -> None:
        """New ids are appended; known ones kept unless listed in ``replace`` (then
        replaced in place if they differ); retired ids are skipped either way."""
        tid = self.pick(data)
        thread = self.touch(tid)
        known = sorted(thread.seen | thread.forgotten) if thread else []
        old = data.draw(st.lists(st.sampled_from([*known, *POOL_IDS]), unique=True, max_size=4))
        extra = data.draw(st.lists(st.tuples(st.none(), bodies), max_size=2), label="new")
        edit = data.draw(st.integers(0, 1), label="edit")
        batch = [{"id": mid, "body": f"upsert {mid} {edit}"} for mid in old] + self.messages(extra)
        batch = data.draw(st.permutations(batch), label="order")
        ids = [m["id"] for m in batch]
        chosen = st.lists(st.sampled_from(ids), unique=True) if ids else st.just([])
        replace = set(data.draw(chosen, label="replace"))
        if thread is None:
            with pytest.raises(ThreadNotFound):
                self.threads.upsert(tid, batch, replace=replace)
            return
        appended, replaced, unchanged = [], [], []
        for message in batch:
            mid = message["id"]
            if mid not in thread.seen:
                thread.records.append(message)
                thread.forgotten.discard(mid)
                appended.append(mid)
            elif mid in replace and mid in thread.listed:
                pos = thread.listed.index(mid)
                if encoded(thread.records[pos]) != encoded(message):
                    thread.records[pos] = message
                    replaced.append(mid)
                else:
                    unchanged.append(mid)
            else:
                unchanged.append(mid)
        if appended or replaced:
            thread.bump()
        result = self.threads.upsert(tid, batch, replace=replace)
        assert (
            result.appended_ids,
            result.replaced_ids,
            result.unchanged_ids,
            result.length,
            result.version,
        ) == (
            tuple(appended),
            tuple(replaced),
            tuple(unchanged),
            len(thread.records),
            thread.version,
        )

    @rule(data=st.data())
    def truncate_from(self, data: st.DataObject) -> None:
        tid = self.pick(data)
        thread = self.touch(tid)
        mid = data.draw(self.message_id(thread), label="message_id")
        if thread is None:
            with pytest.raises(ThreadNotFound):
                self.threads.truncate_from(tid, mid)
            return
        removed: list[str] = []
        if mid in thread.listed:  # a retired or unknown id changes nothing
            pos = thread.listed.index(mid)
            removed = thread.listed[pos:]
            thread.records = thread.records[:pos]
            thread.forgotten |= set(removed)
            thread.bump()
        result = self.threads.truncate_from(tid, mid)
        assert (result.removed_ids, result.length, result.version) == (
            tuple(removed),
            len(thread.records),
            thread.version,
        )

    @rule(data=st.data())
    def replace_all(self, data: st.DataObject) -> None:
        tid = self.pick(data)
        thread = self.touch(tid)
        known = sorted(thread.seen) if thread else []
        kept = data.draw(st.lists(st.sampled_from(known), unique=True) if known else st.just([]))
        keep_bodies = data.draw(st.booleans(), label="keep bodies of listed ids")
        by_id = {r["id"]: r for r in thread.records} if thread else {}
        batch = [
            by_id[mid] if keep_bodies and mid in by_id else {"id": mid, "body": f"edited {mid}"}
            for mid in kept
        ]
        extra = data.draw(st.lists(st.tuples(st.none(), bodies), max_size=2), label="new")
        batch = data.draw(st.permutations(batch + self.messages(extra)), label="order")
        if thread is None:
            with pytest.raises(ThreadNotFound):
                self.threads.replace_all(tid, batch)
            return
        changed = [encoded(r) for r in thread.records] != [encoded(r) for r in batch]
        if changed:
            thread.retired = thread.seen - {m["id"] for m in batch}
            thread.forgotten -= {m["id"] for m in batch}
            thread.records = list(batch)
            thread.bump()
        result = self.threads.replace_all(tid, batch)
        assert (result.changed, result.length, result.version) == (
            changed,
            len(batch),
            thread.version,
        )

    # -- state ------------------------------------------------------------------------

    @rule(state=states, data=st.data())
    def save_state(self, state: dict[str, Any], data: st.DataObject) -> None:
        tid = self.pick(data)
        thread = self.touch(tid)
        if thread is None:
            with pytest.raises(ThreadNotFound):
                self.threads.save_state(tid, state)
            return
        if thread.state is None or encoded(thread.state) != encoded(state):
            thread.state = dict(state)
            thread.bump()
        assert self.threads.save_state(tid, state) == thread.version

    # -- tiers --------------------------------------------------------------------------

    @rule(evict=st.booleans(), data=st.data())
    def flush(self, evict: bool, data: st.DataObject) -> None:
        tid = self.pick(data)
        thread = self.model.get(tid)
        result = self.threads.flush(tid, evict=evict)
        if thread is None:
            assert result.status == "absent"
            return
        if not thread.hot:  # already evicted: the archive is current
            assert (result.status, result.evicted) == ("unchanged", False)
            assert result.etag == self.cold.head(tid)
            return
        expected = "archived" if thread.dirty else "unchanged"
        assert (result.status, result.version, result.evicted) == (expected, thread.version, evict)
        assert (result.size_bytes > 0) is thread.dirty
        assert result.etag == self.cold.head(tid)
        thread.dirty, thread.archived, thread.hot = False, True, not evict

    @rule(data=st.data())
    def hydrate(self, data: st.DataObject) -> None:
        tid = self.pick(data)
        thread = self.model.get(tid)
        result = self.threads.hydrate(tid)
        if thread is None:
            assert result.status == "absent"
        elif thread.hot:
            assert result.status == "hot"
        else:
            assert (result.status, result.version, result.length) == (
                "restored",
                thread.version,
                len(thread.records),
            )
            thread.make_hot()

    @rule(start=st.integers(-4, 4), stop=st.integers(-4, 4), data=st.data())
    def read(self, start: int, stop: int, data: st.DataObject) -> None:
        """Tier-transparent reads: a cold thread is hydrated, an unknown one refused."""
        tid = self.pick(data)
        thread = self.touch(tid)
        if thread is None:
            with pytest.raises(ThreadNotFound):
                self.threads.load(tid, start, stop)
            with pytest.raises(ThreadNotFound):
                self.threads.load_state(tid)
            return
        assert self.threads.load(tid, start, stop) == lrange(thread.records, start, stop)
        assert self.threads.load_state(tid) == (thread.state or {})

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def every_thread_matches_the_model_in_its_tier(self) -> None:
        hot = self.threads.hot
        for tid in THREADS:
            thread = self.model.get(tid)
            if thread is None:
                # in no tier: the hydrate inside load finds no archive and writes nothing
                with pytest.raises(ThreadNotFound):
                    self.threads.load(tid)
                assert not hot.exists(tid)
                continue
            assert len(set(thread.listed)) == len(thread.listed)
            assert not set(thread.listed) & thread.retired
            keys = hot.keys(tid)
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.meta).hget(keys.meta, "version").get(keys.state).hgetall(keys.ids)
            exists, version, raw_state, raw_ledger = pipe.execute()
            assert bool(exists) is thread.hot
            if thread.hot:
                assert hot.load(tid) == thread.records
                assert int(version) == thread.version
                assert raw_state == (None if thread.state is None else encoded(thread.state))
                ledger = {k.decode(): int(v) for k, v in raw_ledger.items()}
                listed = {mid: pos for pos, mid in enumerate(thread.listed)}
                assert {k: v for k, v in ledger.items() if v >= 0} == listed
                assert {k for k, v in ledger.items() if v < 0} == thread.retired
                assert (self.cold.head(tid) is not None) is thread.archived
            else:
                found = self.cold.read(tid)
                assert found is not None
                snapshot = found[0]
                assert snapshot.namespace == NAMESPACE
                assert snapshot.messages() == thread.records
                assert list(snapshot.ids) == thread.listed
                assert set(snapshot.retired_ids) == thread.retired
                assert len(snapshot.retired_ids) == len(thread.retired)
                assert snapshot.state == (thread.state or {})
                assert snapshot.version == thread.version
                fork_of = (snapshot.parent, snapshot.fork_point) if snapshot.parent else None
                assert fork_of == thread.fork_of


def run_machine(client: redis.Redis, make_cold: Callable[[], ColdStore], examples: int) -> None:
    TieredMachine.client = client
    TieredMachine.make_cold = staticmethod(make_cold)  # type: ignore[assignment]
    run_state_machine_as_test(
        TieredMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@pytest.fixture
def prop_client(redis_server: EmbeddedRedis) -> Any:
    client = redis_server.client()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def test_tiered_operations_over_file_cold_store_match_the_model(
    prop_client: redis.Redis, tmp_path: Path
) -> None:
    run_machine(prop_client, lambda: FileColdStore(tmp_path / uuid.uuid4().hex), examples=80)


def test_tiered_operations_over_s3_on_http_match_the_model(
    prop_client: redis.Redis, s3_bucket: tuple[Any, str]
) -> None:
    client, bucket = s3_bucket
    run_machine(
        prop_client,
        lambda: S3ColdStore(client, bucket, prefix=f"p-{uuid.uuid4().hex[:12]}"),
        examples=12,
    )

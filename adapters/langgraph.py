"""A LangGraph checkpointer on agent-threads: ``AgentThreadsSaver(threads)``.

One LangGraph thread is one agent-threads thread of the same id, in the namespace of
the ``Threads`` given (give LangGraph a namespace of its own). Its checkpoint
namespaces, checkpoints, channel values and pending writes are records of that
thread, in the order they were written (docs/integrations.md has the whole mapping):

* ``ns|<ns>``: the namespace exists (written once, with its first checkpoint);
* ``ch|<ns>|<channel>|<version>``: one channel value, written once per version;
* ``cp|<ns>|<checkpoint id>``: the checkpoint without its channel values, its
  metadata and its parent's id (a repeated put of one id: the last write wins);
* ``wr|<ns>|<checkpoint id>|<task id>|<idx>``: one pending write; regular writes
  (idx >= 0) keep the first write, special ones (``WRITES_IDX_MAP``, idx < 0) the last.

Id parts are percent-encoded (any string fits); an id over the store's id limit is
``<kind>#<sha256>`` instead. Values are LangGraph's serde output, ``(type, bytes)``,
kept as ``[type, base64]``: lossless for whatever the serializer writes.

Every ``put`` and ``put_writes`` is one upsert script (``HotStore.upsert``), the
activity index included. A pending write always follows its checkpoint in the list
(it is written after ``put`` returned), so a checkpoint and its writes are all in any
tail of the list that holds the checkpoint: ``get_tuple`` reads growing tails, never
the whole thread for a recent checkpoint.

The async methods that read or write one thread (``aget_tuple``, ``alist``, ``aput``,
``aput_writes``, ``aget_delta_channel_history``) run on ``redis.asyncio``
(``storage.aio``) when the saver is given an ``AsyncHotStore`` (``aio=``): the same
scripts and reads, and only a hydrate from the cold tier goes to a worker thread. The
others (delete, copy, prune, delete_for_runs: cold-tier and multi-step work), and every
async method of a saver without ``aio``, run the sync one in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import hashlib
import json
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from storage.aio import AsyncHotStore, AsyncThreads
from storage.errors import InvalidMessage, ThreadExists, ThreadNotFound, VersionConflict
from storage.records import Message, decode_records
from storage.results import UpsertResult
from storage.tiered import Threads

TAIL_RECORDS = 64
"""Records of the first tail ``get_tuple`` reads; each further read is 4x longer."""
_ATTEMPTS = 5
PRUNE_STRATEGIES = ("keep_latest", "delete")


class InvalidCheckpointArgument(InvalidMessage):
    """A config without ``configurable.thread_id`` (or a write without
    ``checkpoint_id``), an unknown prune strategy: nothing was read or written."""


@dataclass(frozen=True, slots=True)
class _Query:
    """What ``list`` selects inside one thread."""

    namespace: str | None
    checkpoint_id: str | None
    before: str | None
    filter: Mapping[str, Any] | None


def _quoted(part: str) -> str:
    try:
        return quote(part, safe="")
    except UnicodeEncodeError as exc:  # a lone surrogate: no record could hold it either
        raise InvalidCheckpointArgument(f"{part[:40]!r} is not valid UTF-8 text") from exc


def _kind(record: Message) -> str | None:
    body = record["body"]
    kind = body.get("lg") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None


class _View:
    """The LangGraph records of a run of a thread's list (a tail, or all of it)."""

    def __init__(self, records: builtins.list[Message], *, whole: bool) -> None:
        self.records = records
        self.whole = whole
        self.checkpoints: builtins.list[dict[str, Any]] = []
        """Checkpoint record bodies in list order (the last one of a namespace is its latest)."""
        self.by_id: dict[tuple[str, str], dict[str, Any]] = {}
        self.values: dict[str, dict[str, Any]] = {}
        """Channel-value bodies by record id."""
        self.writes: dict[tuple[str, str], builtins.list[dict[str, Any]]] = defaultdict(list)
        self.record_ids: dict[int, str] = {}
        """id(body) -> its record id, for rewrites that drop records."""
        for record in records:
            kind, raw = _kind(record), record["body"]
            if kind is None or not isinstance(raw, dict):
                continue
            body = cast(dict[str, Any], raw)
            self.record_ids[id(body)] = record["id"]
            if kind == "cp":
                self.checkpoints.append(body)
                self.by_id[(body["ns"], body["id"])] = body
            elif kind == "ch":
                self.values[record["id"]] = body
            elif kind == "wr":
                self.writes[(body["ns"], body["cp"])].append(body)

    def find(self, namespace: str, checkpoint_id: str | None) -> dict[str, Any] | None:
        """That checkpoint of ``namespace``, or its latest (the last one written)."""
        if checkpoint_id is not None:
            return self.by_id.get((namespace, checkpoint_id))
        return next((b for b in reversed(self.checkpoints) if b["ns"] == namespace), None)

    def ordered_writes(self, namespace: str, checkpoint_id: str) -> builtins.list[dict[str, Any]]:
        """A checkpoint's writes in ``writes_sort_key`` order, as LangGraph replays them."""
        found = self.writes.get((namespace, checkpoint_id), [])
        return sorted(found, key=lambda w: writes_sort_key(w["path"], w["task"], w["idx"]))


class AgentThreadsSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoints in agent-threads threads: Redis (standalone or Cluster,
    core commands only) while hot, the cold tier (S3 or files) once flushed.

    ``threads`` is a ``storage.tiered.Threads``; its namespace should hold LangGraph
    threads only (``list(None)`` and ``delete_for_runs`` go through all of them).
    ``serde`` as for any saver (default ``JsonPlusSerializer``). ``aio``: an
    ``AsyncHotStore`` on the same Redis (``AsyncHotStore.like(threads.hot, async_redis)``)
    for the async methods' hot path; without it they run the sync ones in a worker thread.
    """

    def __init__(
        self,
        threads: Threads,
        *,
        serde: SerializerProtocol | None = None,
        aio: AsyncHotStore | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.threads = threads
        self.aio = None if aio is None else AsyncThreads(threads, aio)
        self._max_id = threads.hot.limits.max_message_id_length

    # -- record ids and bodies ------------------------------------------------------

    def _record_id(self, kind: str, *parts: str) -> str:
        readable = "|".join((kind, *map(_quoted, parts)))
        if len(readable) <= self._max_id:
            return readable
        # '#' is never in a quoted part, so a hashed id never equals a readable one
        digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
        return f"{kind}#{digest}"

    def _value_id(self, namespace: str, channel: str, version: Any) -> str:
        return self._record_id("ch", namespace, channel, str(version))

    def _checkpoint_id(self, namespace: str, checkpoint_id: str) -> str:
        return self._record_id("cp", namespace, checkpoint_id)

    def _dumps(self, value: Any) -> builtins.list[str]:
        kind, data = self.serde.dumps_typed(value)
        return [kind, base64.b64encode(data).decode("ascii")]

    def _loads(self, typed: Sequence[str]) -> Any:
        return self.serde.loads_typed((typed[0], base64.b64decode(typed[1])))

    # -- configs --------------------------------------------------------------------

    @staticmethod
    def _address(config: RunnableConfig) -> tuple[str, str]:
        """(thread id, checkpoint namespace) of ``config``."""
        configurable = config.get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None or isinstance(thread_id, bool):
            raise InvalidCheckpointArgument(
                "the config has no configurable.thread_id; pass "
                '{"configurable": {"thread_id": ...}} to the graph'
            )
        namespace = configurable.get("checkpoint_ns") or ""
        if not isinstance(namespace, str):
            raise InvalidCheckpointArgument(f"checkpoint_ns must be a string, got {namespace!r}")
        return str(thread_id), namespace

    @staticmethod
    def _config(thread_id: str, namespace: str, checkpoint_id: str) -> RunnableConfig:
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": namespace,
                "checkpoint_id": checkpoint_id,
            }
        }

    # -- writes ---------------------------------------------------------------------

    def _write(
        self, thread_id: str, records: Sequence[Mapping[str, Any]], replace: set[str]
    ) -> UpsertResult:
        """One upsert; a thread in no tier is created first (a bad record is refused
        before that, by the upsert's validation: nothing is created for it)."""
        for _ in range(_ATTEMPTS):
            try:
                return self.threads.upsert(thread_id, records, replace=replace)
            except ThreadNotFound:
                # ThreadExists: another first write made it (or restored it): upsert
                with contextlib.suppress(ThreadExists):
                    self.threads.open(thread_id, "new")
        return self.threads.upsert(thread_id, records, replace=replace)

    async def _awrite(
        self,
        aio: AsyncThreads,
        thread_id: str,
        records: Sequence[Mapping[str, Any]],
        replace: set[str],
    ) -> UpsertResult:
        """``_write`` on the asyncio hot tier."""
        for _ in range(_ATTEMPTS):
            try:
                return await aio.upsert(thread_id, records, replace=replace)
            except ThreadNotFound:
                with contextlib.suppress(ThreadExists):
                    await aio.open(thread_id, "new")
        return await aio.upsert(thread_id, records, replace=replace)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and the channel values it changed: one script."""
        thread_id, records, replace, stored = self._put_records(
            config, checkpoint, metadata, new_versions
        )
        self._write(thread_id, records, replace)
        return stored

    def _put_records(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[str, builtins.list[dict[str, Any]], set[str], RunnableConfig]:
        """What ``put`` writes: (thread id, records, ids to replace, the config to return)."""
        thread_id, namespace = self._address(config)
        parent = config["configurable"].get("checkpoint_id")
        stored: dict[str, Any] = dict(checkpoint)
        values: dict[str, Any] = stored.pop("channel_values", None) or {}
        records: builtins.list[dict[str, Any]] = [
            {"id": self._record_id("ns", namespace), "body": {"lg": "ns", "ns": namespace}}
        ]
        for channel, version in new_versions.items():
            if channel in values:  # else the channel is empty at this version: no record
                body = {
                    "lg": "ch",
                    "ns": namespace,
                    "ch": channel,
                    "ver": str(version),
                    "value": self._dumps(values[channel]),
                }
                records.append({"id": self._value_id(namespace, channel, version), "body": body})
        checkpoint_record = self._checkpoint_id(namespace, checkpoint["id"])
        records.append(
            {
                "id": checkpoint_record,
                "body": {
                    "lg": "cp",
                    "ns": namespace,
                    "id": checkpoint["id"],
                    "parent": parent,
                    "checkpoint": self._dumps(stored),
                    "metadata": self._dumps(get_serializable_checkpoint_metadata(config, metadata)),
                },
            }
        )
        return (
            thread_id,
            records,
            {checkpoint_record},
            self._config(thread_id, namespace, checkpoint["id"]),
        )

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes to a checkpoint: one script. A regular write that is
        stored already is kept (a redelivery doubles nothing); a special write
        (error, interrupt, scheduled, resume) replaces the stored one."""
        found = self._writes_records(config, writes, task_id, task_path)
        if found is not None:
            self._write(*found)

    def _writes_records(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> tuple[str, builtins.list[dict[str, Any]], set[str]] | None:
        """What ``put_writes`` writes (thread id, records, ids to replace); None: nothing."""
        thread_id, namespace = self._address(config)
        checkpoint_id = config["configurable"].get("checkpoint_id")
        if not isinstance(checkpoint_id, str):
            raise InvalidCheckpointArgument(
                "put_writes needs the config of a stored checkpoint (configurable.checkpoint_id)"
            )
        if not writes:
            return None
        records: dict[str, dict[str, Any]] = {}
        replace: set[str] = set()
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            record_id = self._record_id("wr", namespace, checkpoint_id, task_id, str(idx))
            body = {
                "lg": "wr",
                "ns": namespace,
                "cp": checkpoint_id,
                "task": task_id,
                "path": task_path,
                "idx": idx,
                "ch": channel,
                "value": self._dumps(value),
            }
            if idx < 0:  # the last write wins, in this batch too
                records[record_id] = {"id": record_id, "body": body}
                replace.add(record_id)
            else:
                records.setdefault(record_id, {"id": record_id, "body": body})
        return thread_id, builtins.list(records.values()), replace

    # -- reads ----------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or its namespace's latest (the last one
        written), with its channel values and pending writes; None if there is none.

        Reads tails of the thread's list, each one consistent, 4x longer each time,
        until one holds the checkpoint (its writes follow it); a checkpoint or
        namespace the thread does not have is told by one read of its id."""
        thread_id, namespace, checkpoint_id, probe = self._target(config)
        window = TAIL_RECORDS
        try:
            while True:
                records = self.threads.load(thread_id, -window, -1)
                view = _View(records, whole=len(records) < window)
                found = view.find(namespace, checkpoint_id)
                if found is not None:
                    missing = self._missing(found, view)
                    fetched = self.threads.get(thread_id, missing) if missing else {}
                    return self._tuple(thread_id, found, view, fetched=fetched)
                if view.whole:
                    return None
                if window == TAIL_RECORDS and not self.threads.get(thread_id, [probe]):
                    return None
                window *= 4
        except ThreadNotFound:
            return None

    def _target(self, config: RunnableConfig) -> tuple[str, str, str | None, str]:
        """(thread id, namespace, checkpoint id or None, the record id that tells whether
        the thread has that checkpoint or namespace) of a ``get_tuple``."""
        thread_id, namespace = self._address(config)
        checkpoint_id = get_checkpoint_id(config)
        probe = (
            self._record_id("ns", namespace)
            if checkpoint_id is None
            else self._checkpoint_id(namespace, checkpoint_id)
        )
        return thread_id, namespace, checkpoint_id, probe

    def _wanted(self, body: dict[str, Any]) -> tuple[Checkpoint, dict[str, str]]:
        """A checkpoint record's checkpoint and its channels' value record ids."""
        checkpoint: Checkpoint = self._loads(body["checkpoint"])
        wanted = {
            channel: self._value_id(body["ns"], channel, version)
            for channel, version in checkpoint.get("channel_versions", {}).items()
        }
        return checkpoint, wanted

    def _missing(self, body: dict[str, Any], view: _View) -> builtins.list[str]:
        """The value records of ``body`` written before the tail ``view`` (read by id)."""
        if view.whole:
            return []
        return [i for i in self._wanted(body)[1].values() if i not in view.values]

    def _tuple(
        self,
        thread_id: str,
        body: dict[str, Any],
        view: _View,
        metadata: CheckpointMetadata | None = None,
        fetched: Mapping[str, Message] | None = None,
    ) -> CheckpointTuple:
        """The tuple of a checkpoint record, from ``view`` and the value records read by
        id (``fetched``, for ``_missing``)."""
        namespace, checkpoint_id = body["ns"], body["id"]
        checkpoint, wanted = self._wanted(body)
        found = {i: view.values[i] for i in wanted.values() if i in view.values}
        for i, record in (fetched or {}).items():
            found.setdefault(i, cast(dict[str, Any], record["body"]))
        checkpoint["channel_values"] = {
            channel: self._loads(found[i]["value"]) for channel, i in wanted.items() if i in found
        }
        writes: builtins.list[PendingWrite] = [
            (w["task"], w["ch"], self._loads(w["value"]))
            for w in view.ordered_writes(namespace, checkpoint_id)
        ]
        parent = body.get("parent")
        return CheckpointTuple(
            config=self._config(thread_id, namespace, checkpoint_id),
            checkpoint=checkpoint,
            metadata=self._loads(body["metadata"]) if metadata is None else metadata,
            parent_config=self._config(thread_id, namespace, parent) if parent else None,
            pending_writes=writes,
        )

    def _query(
        self,
        config: RunnableConfig | None,
        filter: Mapping[str, Any] | None,
        before: RunnableConfig | None,
    ) -> tuple[str | None, _Query]:
        if config is None:
            return None, _Query(None, None, get_checkpoint_id(before) if before else None, filter)
        thread_id, _ = self._address(config)
        namespace = config["configurable"].get("checkpoint_ns")
        return thread_id, _Query(
            namespace,
            get_checkpoint_id(config),
            get_checkpoint_id(before) if before else None,
            filter,
        )

    def _list_thread(
        self, thread_id: str, query: _Query, limit: int | None
    ) -> builtins.list[CheckpointTuple]:
        """One thread's checkpoints that match ``query``, newest (highest id) first."""
        try:
            records = self.threads.load(thread_id)
        except ThreadNotFound:
            return []
        return self._listed(thread_id, _View(records, whole=True), query, limit)

    def _listed(
        self, thread_id: str, view: _View, query: _Query, limit: int | None
    ) -> builtins.list[CheckpointTuple]:
        """The checkpoints of one thread's whole ``view`` that match ``query``."""
        chosen = [
            body
            for body in view.checkpoints
            if (query.namespace is None or body["ns"] == query.namespace)
            and (query.checkpoint_id is None or body["id"] == query.checkpoint_id)
            and (query.before is None or body["id"] < query.before)
        ]
        chosen.sort(key=lambda body: body["id"], reverse=True)
        found: builtins.list[CheckpointTuple] = []
        for body in chosen:
            if limit is not None and len(found) >= limit:
                break
            metadata: CheckpointMetadata = self._loads(body["metadata"])
            if query.filter and not all(
                metadata.get(key) == value for key, value in query.filter.items()
            ):
                continue
            found.append(self._tuple(thread_id, body, view, metadata))
        return found

    def _all_thread_ids(self) -> builtins.list[str]:
        """Every thread of the namespace: hot ones from the activity index, evicted
        ones from the cold tier's listing."""
        hot = self.threads.hot
        seen = dict.fromkeys(t for t, _ in hot.active_threads(max(1, hot.activity_count())))
        seen.update(dict.fromkeys(o.thread_id for o in self.threads.cold.list()))
        return builtins.list(seen)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first (per thread; ``config=None``: every thread of the
        namespace), filtered by metadata equality, ``before`` a checkpoint id, ``limit``."""
        thread_id, query = self._query(config, filter, before)
        left = limit
        for tid in [thread_id] if thread_id is not None else self._all_thread_ids():
            if left is not None and left <= 0:
                return
            found = self._list_thread(tid, query, left)
            yield from found
            if left is not None:
                left -= len(found)

    # -- threads --------------------------------------------------------------------

    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread from both tiers (a tombstone keeps it deleted)."""
        self.threads.delete(str(thread_id))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of the source. A target in no tier becomes a
        fork of the source (one script, or one per slot on Redis Cluster); an existing
        target gets the source's records it lacks appended (its own records win)."""
        source, target = str(source_thread_id), str(target_thread_id)
        if source == target or self.threads.hydrate(source).status == "absent":
            return
        if self.threads.hydrate(target).status == "absent":
            try:
                if self.threads.open(target, "fork", source=source) == "forked":
                    return
            except ThreadNotFound:  # the source was deleted meanwhile
                return
            except ThreadExists:  # created meanwhile: merge into it below
                pass
        try:
            records = [r for r in self.threads.load(source) if _kind(r) is not None]
        except ThreadNotFound:
            return
        batch = self.threads.hot.limits.max_batch
        for first in range(0, len(records), batch):
            self._write(target, records[first : first + batch], set())

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's latest checkpoint (the one
        ``get_tuple`` returns), its writes and values, and the ancestors a
        ``DeltaChannel`` replays from; ``"delete"``: delete the threads."""
        if strategy not in PRUNE_STRATEGIES:
            raise InvalidCheckpointArgument(
                f"unknown prune strategy {strategy!r}: use one of {PRUNE_STRATEGIES}"
            )
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
            else:
                self._rewrite(str(thread_id), self._unneeded_by_latest)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata ``run_id`` is one of ``run_ids``, their
        writes and the values no other checkpoint uses, in every thread of the
        namespace (cold ones are read in place and hydrated only if they hold one)."""
        runs = set(run_ids)
        if not runs:
            return

        def unneeded(view: _View) -> set[str]:
            kept = [
                b for b in view.checkpoints if self._loads(b["metadata"]).get("run_id") not in runs
            ]
            if len(kept) == len(view.checkpoints):
                return set()
            return self._unneeded(view, kept)

        for thread_id in self._all_thread_ids():
            records = self._peek(thread_id)
            if records and unneeded(_View(records, whole=True)):
                self._rewrite(thread_id, unneeded)

    def _peek(self, thread_id: str) -> builtins.list[Message]:
        """The thread's records read where they are: hot, or the cold archive (a scan
        over every thread does not restore them all into Redis)."""
        try:
            return self.threads.hot.load(thread_id)
        except ThreadNotFound:
            found = self.threads.cold.read(thread_id)
            return decode_records(builtins.list(found[0].records)) if found else []

    def _rewrite(self, thread_id: str, unneeded: Callable[[_View], set[str]]) -> None:
        """Drop the records ``unneeded`` names, by one replace fenced on the version
        they were read at: a write that lands meanwhile makes it read again, never lost.
        Dropped ids stay retired: a late redelivered write to them is skipped."""
        for attempt in range(_ATTEMPTS):
            pin = self.threads.write_pin_ms
            if self.threads.hydrate(thread_id, pin_ms=pin).status == "absent":
                return
            try:
                version = self.threads.hot.info(thread_id).version
                records = self.threads.hot.load(thread_id)
            except ThreadNotFound:  # evicted between the two: hydrate again
                continue
            drop = unneeded(_View(records, whole=True))
            if not drop:
                return
            kept = [r for r in records if r["id"] not in drop]
            try:
                self.threads.replace_all(thread_id, kept, expected_version=version)
                return
            except ThreadNotFound:  # deleted meanwhile
                return
            except VersionConflict:
                if attempt == _ATTEMPTS - 1:
                    raise

    def _unneeded_by_latest(self, view: _View) -> set[str]:
        """Everything but each namespace's latest checkpoint and its DeltaChannel chain."""
        kept: builtins.list[dict[str, Any]] = []
        for namespace in dict.fromkeys(b["ns"] for b in view.checkpoints):
            latest = view.find(namespace, None)
            assert latest is not None
            kept += self._delta_chain(view, latest)
        return self._unneeded(view, kept)

    def _delta_chain(self, view: _View, latest: dict[str, Any]) -> builtins.list[dict[str, Any]]:
        """``latest`` and the ancestors ``get_delta_channel_history`` walks for it: back
        to one holding a stored value of each DeltaChannel updated since its snapshot
        (metadata ``counters_since_delta_snapshot``)."""
        chain = [latest]
        pending = set(self._loads(latest["metadata"]).get("counters_since_delta_snapshot") or ())
        pending -= self._stored_channels(view, latest)
        parent = latest.get("parent")
        while pending and parent:
            ancestor = view.by_id.get((latest["ns"], parent))
            if ancestor is None:
                break
            chain.append(ancestor)
            pending -= self._stored_channels(view, ancestor)
            parent = ancestor.get("parent")
        return chain

    def _stored_channels(self, view: _View, body: dict[str, Any]) -> set[str]:
        versions = self._loads(body["checkpoint"]).get("channel_versions", {})
        return {
            channel
            for channel, version in versions.items()
            if self._value_id(body["ns"], channel, version) in view.values
        }

    def _unneeded(self, view: _View, kept: Iterable[dict[str, Any]]) -> set[str]:
        """The LangGraph records not needed by the ``kept`` checkpoints (their writes,
        the values their versions name, their namespaces' markers)."""
        needed: set[str] = set()
        for body in kept:
            namespace = body["ns"]
            needed.add(view.record_ids[id(body)])
            needed.add(self._record_id("ns", namespace))
            writes = view.writes.get((namespace, body["id"]), [])
            needed.update(view.record_ids[id(w)] for w in writes)
            versions = self._loads(body["checkpoint"]).get("channel_versions", {})
            needed.update(self._value_id(namespace, c, v) for c, v in versions.items())
        return {r["id"] for r in view.records if _kind(r) is not None} - needed

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """The base class's ancestor walk over one read of the thread (the default
        reads one checkpoint per ancestor)."""
        if not channels:
            return {}
        thread_id, _ = self._address(config)
        try:
            records = self.threads.load(thread_id)
        except ThreadNotFound:
            records = []
        return self._delta_history(_View(records, whole=True), config, channels)

    def _delta_history(
        self, view: _View, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """``get_delta_channel_history`` over one read of the whole thread."""
        _, namespace = self._address(config)
        target = view.find(namespace, get_checkpoint_id(config))
        collected: dict[str, builtins.list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        remaining = set(channels)
        parent = target.get("parent") if target else None
        while parent and remaining:
            ancestor = view.by_id.get((namespace, parent))
            if ancestor is None:
                break
            for write in reversed(view.ordered_writes(namespace, ancestor["id"])):
                if write["ch"] in remaining:
                    collected[write["ch"]].append(
                        (write["task"], write["ch"], self._loads(write["value"]))
                    )
            versions = self._loads(ancestor["checkpoint"]).get("channel_versions", {})
            for channel in builtins.list(remaining):
                value_id = self._value_id(namespace, channel, versions.get(channel))
                if channel in versions and value_id in view.values:
                    seeds[channel] = self._loads(view.values[value_id]["value"])
                    remaining.discard(channel)
            parent = ancestor.get("parent")
        history: dict[str, DeltaChannelHistory] = {}
        for channel in channels:
            entry: DeltaChannelHistory = {"writes": builtins.list(reversed(collected[channel]))}
            if channel in seeds:
                entry["seed"] = seeds[channel]
            history[channel] = entry
        return history

    def get_next_version(self, current: str | None, channel: None) -> str:
        """``<counter, 32 digits>.<16 random digits>``: increasing, and two branches
        from one checkpoint never name different values with one version (a value
        is stored once per (channel, version): the first write wins)."""
        counter = 0 if current is None else int(str(current).split(".")[0])
        return f"{counter + 1:032d}.{secrets.randbelow(10**16):016d}"

    # -- async: on redis.asyncio with ``aio``, else the sync methods in a thread -------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """``get_tuple``: the same tails and reads by id, awaited on redis.asyncio."""
        if self.aio is None:
            return await asyncio.to_thread(self.get_tuple, config)
        thread_id, namespace, checkpoint_id, probe = self._target(config)
        window = TAIL_RECORDS
        try:
            while True:
                records = await self.aio.load(thread_id, -window, -1)
                view = _View(records, whole=len(records) < window)
                found = view.find(namespace, checkpoint_id)
                if found is not None:
                    missing = self._missing(found, view)
                    fetched = await self.aio.get(thread_id, missing) if missing else {}
                    return self._tuple(thread_id, found, view, fetched=fetched)
                if view.whole:
                    return None
                if window == TAIL_RECORDS and not await self.aio.get(thread_id, [probe]):
                    return None
                window *= 4
        except ThreadNotFound:
            return None

    async def _alist_thread(
        self, thread_id: str, query: _Query, limit: int | None
    ) -> builtins.list[CheckpointTuple]:
        if self.aio is None:
            return await asyncio.to_thread(self._list_thread, thread_id, query, limit)
        try:
            records = await self.aio.load(thread_id)
        except ThreadNotFound:
            return []
        return self._listed(thread_id, _View(records, whole=True), query, limit)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        thread_id, query = self._query(config, filter, before)
        if thread_id is not None:
            thread_ids = [thread_id]
        else:
            thread_ids = await asyncio.to_thread(self._all_thread_ids)
        left = limit
        for tid in thread_ids:
            if left is not None and left <= 0:
                return
            found = await self._alist_thread(tid, query, left)
            for item in found:
                yield item
            if left is not None:
                left -= len(found)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        if self.aio is None:
            return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)
        thread_id, records, replace, stored = self._put_records(
            config, checkpoint, metadata, new_versions
        )
        await self._awrite(self.aio, thread_id, records, replace)
        return stored

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        if self.aio is None:
            await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)
            return
        found = self._writes_records(config, writes, task_id, task_path)
        if found is not None:
            await self._awrite(self.aio, *found)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        if self.aio is None or not channels:
            return await asyncio.to_thread(
                lambda: self.get_delta_channel_history(config=config, channels=channels)
            )
        thread_id, _ = self._address(config)
        try:
            records = await self.aio.load(thread_id)
        except ThreadNotFound:
            records = []
        return self._delta_history(_View(records, whole=True), config, channels)

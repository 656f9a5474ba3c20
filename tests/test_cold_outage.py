"""The cold tier down during ``threads.flush`` and ``threads.hydrate``, at the task
level: a real ``celery worker`` whose S3 endpoint goes through a fault proxy that
drops connections, stalls them, or is not there at all (connection refused).

Contract: a failed flush loses nothing (the thread stays hot, byte for byte); a
failed hydrate (or an append that needed one) writes nothing; the task retries
``AGENT_THREADS_MAX_RETRIES`` times (2 here, with 0-1 s backoff, to stay fast),
then the caller gets ``ColdStoreUnavailable`` naming the thread, the S3
operation and the cause; once S3 is back, the same call sent again succeeds.
The hot tier and the broker are direct (see ``test_network_faults.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from storage import HotStore
from storage.cold import S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.errors import ColdStoreUnavailable
from storage.tiered import Threads
from tests.conftest import msg, redis_contents, s3_client_for, without_read_records
from tests.faultproxy import FaultProxy
from tests.servers import MotoServer
from tests.test_network_faults import FAST_FAILURE, WorkerStack

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

MAX_RETRIES = 2
RESULT_TIMEOUT = 90
Outage = Literal["drop", "stall", "refused"]


class ColdOutage:
    """A worker whose S3 endpoint is ``proxy``, and direct views of both tiers."""

    def __init__(self, broker: EmbeddedRedis, s3: MotoServer, root: Path) -> None:
        self.s3 = s3
        self.bucket = f"cold-{uuid.uuid4().hex[:12]}"
        s3_client = s3_client_for(s3.url)
        s3_client.create_bucket(Bucket=self.bucket)
        self.proxy = FaultProxy(("127.0.0.1", s3.port), name="s3").start()
        self.port = self.proxy.port
        self.hot_client = broker.client()
        self.direct = Threads(HotStore(self.hot_client), S3ColdStore(s3_client, self.bucket))
        self.stack = WorkerStack(
            name="coldout",
            broker=broker,
            hot_url=broker.url,  # db 0; the broker and results use dbs 1 and 2
            cold_url=f"s3://{self.bucket}/threads",
            s3_endpoint_url=f"http://127.0.0.1:{self.port}",
            log_path=root / "worker.log",
            settings={
                **FAST_FAILURE,
                "AGENT_THREADS_MAX_RETRIES": str(MAX_RETRIES),
                "AGENT_THREADS_S3_MAX_ATTEMPTS": "1",
                "AGENT_THREADS_S3_READ_TIMEOUT": "1",
            },
        )
        self.injected: dict[str, int] = {"drop": 0, "stall": 0, "refused": 0}

    def begin(self, outage: Outage) -> None:
        self.injected[outage] += 1
        if outage == "drop":
            self.proxy.drop()
        elif outage == "stall":
            self.proxy.stall()
        else:  # nothing listens on the endpoint's port
            self.proxy.stop()

    def end(self) -> None:
        if self.proxy.running:
            self.proxy.heal()
        else:
            self.proxy = FaultProxy(("127.0.0.1", self.s3.port), port=self.port, name="s3").start()

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.proxy.stop()
            self.hot_client.close()

    def hot_picture(self) -> dict[bytes, Any]:
        """The hot tier's contents, but for the lineage notes a flush makes of what it
        read (``read:<version>``), which a failed upload leaves behind harmlessly."""
        return without_read_records(redis_contents(self.hot_client))

    def get(self, name: str, **kwargs: Any) -> Any:
        return self.stack.call(name, **kwargs)


@pytest.fixture(scope="module")
def outage_stack(
    s3_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ColdOutage]:
    with EmbeddedRedis() as broker:
        setup = ColdOutage(broker, s3_server, tmp_path_factory.mktemp("cold-outage"))
        try:
            setup.stack.start()
            yield setup
        finally:
            setup.close()


@pytest.fixture
def cold(outage_stack: ColdOutage) -> Iterator[ColdOutage]:
    outage_stack.end()
    try:
        yield outage_stack
    finally:
        outage_stack.end()


def fails_after_retries(
    stack: WorkerStack, task: str, result: Any, thread_id: str, action: str
) -> str:
    """The task ended with ColdStoreUnavailable after all its retries; its message."""
    with pytest.raises(ColdStoreUnavailable) as failure:
        result.get(timeout=RESULT_TIMEOUT)
    assert result.retries == MAX_RETRIES
    stack.tally(task, result)
    message = str(failure.value)
    assert repr(thread_id) in message
    assert f"S3 {action}" in message
    assert message.endswith(f"(gave up after {MAX_RETRIES} retries)")
    return message


FIGURES: dict[str, Any] = {"test": "cold outage", "cases": {}}


def record(
    case: str, cold: ColdOutage, messages: list[str], started: float, prop: Callable[..., None]
) -> None:
    FIGURES["cases"][case] = {
        "errors_seen_by_caller": messages,
        "task_retries_so_far": cold.stack.retries,
        "proxy": {
            "drops": cold.proxy.counts().drops,
            "stalled_connections": cold.proxy.counts().stalled_connections,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    prop("figures", FIGURES["cases"][case])
    print("FAULT FIGURES", json.dumps({"test": f"cold outage: {case}", **FIGURES["cases"][case]}))


@pytest.mark.parametrize("outage", ["drop", "stall", "refused"])
def test_flush_with_s3_down_keeps_the_thread_hot_then_fails_typed_then_succeeds_when_back(
    cold: ColdOutage, outage: Outage, record_property: Callable[..., None]
) -> None:
    started = time.monotonic()
    tid = f"flush-{outage}"
    ids = [f"{tid}-m{i}" for i in range(5)]
    cold.get("create", thread_id=tid, owner="test")
    cold.get("append", thread_id=tid, messages=[msg(i) for i in ids])
    before = cold.hot_picture()

    cold.begin(outage)
    try:
        failed = cold.stack.client.flush(tid)
        message = fails_after_retries(cold.stack, "flush", failed, tid, "write")
        assert cold.hot_picture() == before, "a failed flush changed the hot tier"
        assert cold.direct.cold.head(tid) is None
    finally:
        cold.end()

    flushed = cold.get("flush", thread_id=tid, evict=True)
    # "unchanged": an upload held by the stall landed late and the CAS found it
    assert flushed["status"] in ("archived", "unchanged")
    assert flushed["evicted"] is True
    assert not cold.direct.hot.exists(tid)
    found = cold.direct.cold.read(tid)
    assert found is not None
    assert list(found[0].ids) == ids
    assert cold.get("hydrate", thread_id=tid)["status"] == "restored"
    assert [m["id"] for m in cold.get("load", thread_id=tid)["messages"]] == ids
    record(f"flush, S3 {outage}", cold, [message], started, record_property)


@pytest.mark.parametrize("outage", ["drop", "stall", "refused"])
def test_hydrate_with_s3_down_writes_nothing_then_fails_typed_then_succeeds_when_back(
    cold: ColdOutage, outage: Outage, record_property: Callable[..., None]
) -> None:
    started = time.monotonic()
    tid = f"hydrate-{outage}"
    ids = [f"{tid}-m{i}" for i in range(4)]
    cold.get("create", thread_id=tid, owner="test")
    cold.get("append", thread_id=tid, messages=[msg(i) for i in ids])
    assert cold.get("flush", thread_id=tid, evict=True)["evicted"] is True
    before = cold.hot_picture()

    cold.begin(outage)
    try:
        # both need the archive: a hydrate, and an append to the evicted thread
        hydrating = cold.stack.client.hydrate(tid)
        appending = cold.stack.client.append(tid, [msg(f"{tid}-late")])
        messages = [
            fails_after_retries(cold.stack, "hydrate", hydrating, tid, "read"),
            fails_after_retries(cold.stack, "append", appending, tid, "read"),
        ]
        assert cold.hot_picture() == before, "a failed hydrate wrote to the hot tier"
    finally:
        cold.end()

    assert cold.get("hydrate", thread_id=tid)["status"] == "restored"
    appended = cold.get("append", thread_id=tid, messages=[msg(f"{tid}-late")])
    assert appended["appended_ids"] == [f"{tid}-late"]
    loaded = [m["id"] for m in cold.get("load", thread_id=tid)["messages"]]
    assert loaded == [*ids, f"{tid}-late"]
    record(f"hydrate, S3 {outage}", cold, messages, started, record_property)

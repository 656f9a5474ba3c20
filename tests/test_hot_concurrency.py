"""Concurrent appenders on real OS threads: every message exactly once, in one order."""

from __future__ import annotations

import random
import threading

import redis

from storage import HotStore
from storage.embedded import EmbeddedRedis
from tests.conftest import msg

MESSAGES = [msg(f"m{i:04d}") for i in range(2000)]


def test_eight_threads_appending_same_messages_store_each_exactly_once(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    HotStore(redis_client).create("shared")
    barrier = threading.Barrier(8)
    appended: list[list[str]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        rng = random.Random(index)
        order = MESSAGES[:]
        rng.shuffle(order)
        client = redis_server.client()
        store = HotStore(client)
        try:
            barrier.wait(timeout=10)
            position = 0
            while position < len(order):
                size = rng.randint(1, 50)
                result = store.append("shared", order[position : position + size])
                appended[index].extend(result.appended_ids)
                position += size
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert not any(t.is_alive() for t in threads)

    stored = [m["id"] for m in HotStore(redis_client).load("shared")]
    assert len(stored) == 2000
    assert sorted(stored) == [m["id"] for m in MESSAGES]
    # each id was reported appended by exactly one appender
    reported = [i for ids in appended for i in ids]
    assert sorted(reported) == sorted(stored)
    # the ledger points every id at its position in the list
    ledger = redis_client.hgetall("at:{shared}:ids")
    assert {k.decode(): int(v) for k, v in ledger.items()} == {
        mid: pos for pos, mid in enumerate(stored)
    }

"""The production append is one round trip to Redis, the activity index included.

Counted at the client: every request redis-py writes to the socket (a command, or a
whole pipeline) is one round trip. The server is a real redis-server; its command
statistics confirm what ran inside the script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from storage import HotStore
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.observability.metrics import InstrumentedThreads
from tests.conftest import msg
from tests.test_activity import commands_called, indexed, reset_command_stats


class CountingConnection(redis.Connection):
    """A redis-py connection that counts the requests it sends (one per round trip)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> redis.Redis:
    pool = redis.ConnectionPool(
        host="127.0.0.1",
        port=redis_server.port,
        connection_class=CountingConnection,
        max_connections=1,
    )
    client = redis.Redis(connection_pool=pool)
    client.ping()  # connected, scripts loaded below
    return client


def round_trips(action: Any) -> int:
    before = CountingConnection.sent
    action()
    return CountingConnection.sent - before


@pytest.mark.parametrize("store", [Threads, InstrumentedThreads])
def test_every_production_append_is_one_round_trip_even_when_the_index_is_due(
    counted: redis.Redis, redis_client: redis.Redis, tmp_path: Path, store: type[Threads]
) -> None:
    # activity_refresh_ms=0: every append is due an index mark (the worst case)
    threads = store(
        HotStore(counted, activity_refresh_ms=0, ttl_seconds=3600), FileColdStore(tmp_path)
    )
    threads.open("t1", "new")
    threads.append("t1", [msg("m0")])  # the script is loaded now
    reset_command_stats(redis_client)
    for i in range(1, 21):
        assert round_trips(lambda i=i: threads.append("t1", [msg(f"m{i}"), msg(f"x{i}")])) == 1
    assert round_trips(lambda: threads.append("t1", [msg("m1")])) == 1  # a redelivery
    assert commands_called(redis_client, "evalsha") == 21
    assert commands_called(redis_client, "zadd") == 21  # inside the script
    assert indexed(threads.hot)["t1"] >= threads.hot.info("t1").updated_ms


def test_the_mark_in_the_script_only_moves_forward(
    counted: redis.Redis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    threads = Threads(HotStore(counted, activity_refresh_ms=0), FileColdStore(tmp_path))
    threads.open("t1", "new")
    shard = threads.hot.layout.activity_of("t1")
    redis_client.zadd(shard, {"t1": 2**50})  # a mark from a clock far ahead
    threads.append("t1", [msg("m1")])
    assert redis_client.zscore(shard, "t1") == 2**50


def test_a_bare_hot_store_leaves_the_index_to_its_caller(counted: redis.Redis) -> None:
    hot = HotStore(counted, activity_refresh_ms=0)
    hot.create("t1")
    result = hot.append("t1", [msg("m1")])
    assert result.index_due
    assert "t1" not in indexed(hot)


def test_a_production_append_runs_eight_commands_inside_its_script(
    counted: redis.Redis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """EXISTS, HMGET meta, LLEN, HMGET ledger, TIME, HSET ledger, RPUSH, HSET meta:
    no PEXPIRE/PERSIST while no expiry is due, no second HSET for the index mark."""
    threads = Threads(HotStore(counted, activity_refresh_ms=60_000), FileColdStore(tmp_path))
    threads.open("t1", "new")
    threads.append("t1", [msg("m0")])
    reset_command_stats(redis_client)
    for i in range(1, 11):
        threads.append("t1", [msg(f"m{i}")])
    stats = redis_client.info("commandstats")
    inner = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name not in ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config|resetstat")
    }
    assert inner == {
        "exists": 10, "hmget": 20, "llen": 10, "time": 10, "hset": 20, "rpush": 10,
    }  # fmt: skip

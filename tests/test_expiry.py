"""The hot TTL never expires a write the archive does not hold.

With a cold tier (``Threads``), a thread whose version is ahead of its archive
carries no expiry; the TTL starts when a flush (or a hydrate) makes the hot copy
equal to its archive. Without a cold tier (a bare ``HotStore``) the TTL is the
user's retention, refreshed by every write, as before.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from storage import HotStore
from storage.cold import ColdStore
from storage.tiered import Threads
from tasks.stores import build_threads
from tests.conftest import age_expiry, msg
from tests.test_activity import commands_called, reset_command_stats

DAY_MS = 24 * 3600 * 1000


def ttls(client: redis.Redis, hot: HotStore, tid: str) -> dict[str, int]:
    """PTTL of every data key that exists (-1: no expiry)."""
    keys = hot.keys(tid)
    found = {}
    for name in ("meta", "msgs", "ids", "state"):
        key = getattr(keys, name)
        if client.exists(key):
            found[name] = int(client.pttl(key))
    return found


def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_unarchived_writes_carry_no_expiry_at_the_worker_defaults(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The workers' own store (``build_threads`` with the shipped 24 h TTL)."""
    from tasks.service.config import agent_threads as defaults

    settings = {
        **defaults,
        "redis_url": f"redis://127.0.0.1:{redis_client.connection_pool.connection_kwargs['port']}/0",
        "cold_url": f"file://{tmp_path}/cold",
    }
    store = build_threads(settings)
    assert defaults["ttl_seconds"] == 24 * 3600
    store.open("chat", "new")
    store.append("chat", [msg("m1")])
    store.save_state("chat", {"step": 1})
    assert set(ttls(redis_client, store.hot, "chat").values()) == {-1}
    store.flush("chat", evict=False)  # now the archive holds it: the TTL runs
    after = ttls(redis_client, store.hot, "chat")
    assert after
    assert all(DAY_MS - 60_000 < ttl <= DAY_MS for ttl in after.values()), after
    store.append("chat", [msg("m2")])  # ahead of the archive again: no expiry
    assert set(ttls(redis_client, store.hot, "chat").values()) == {-1}


def test_a_restored_thread_expires_until_it_is_written(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    threads = Threads(HotStore(redis_client, ttl_seconds=3600), cold)
    threads.open("t", "new")
    threads.append("t", [msg("m1")])
    threads.flush("t")
    threads.hydrate("t")
    assert all(0 < ttl <= 3_600_000 for ttl in ttls(redis_client, threads.hot, "t").values())
    threads.append("t", [msg("m2")])
    assert set(ttls(redis_client, threads.hot, "t").values()) == {-1}


@pytest.mark.slow
def test_an_unarchived_write_outlives_the_ttl_and_an_archived_one_expires(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    threads = Threads(HotStore(redis_client, ttl_seconds=1), cold)
    threads.open("dirty", "new")
    threads.append("dirty", [msg("m1")])
    threads.open("clean", "new")
    threads.append("clean", [msg("m1")])
    threads.flush("clean", evict=False)
    # the clean copy expires after its TTL; the dirty one is still there, all of it
    assert wait_until(lambda: not threads.hot.exists("clean"), timeout=10)
    assert [m["id"] for m in threads.hot.load("dirty")] == ["m1"]
    # and the expired clean thread is still readable from its archive
    assert [m["id"] for m in threads.load("clean")] == ["m1"]


def test_without_a_cold_tier_the_ttl_is_the_retention(redis_client: redis.Redis) -> None:
    hot = HotStore(redis_client, ttl_seconds=3600)
    hot.create("plain")
    hot.append("plain", [msg("m1")])
    assert all(0 < ttl <= 3_600_000 for ttl in ttls(redis_client, hot, "plain").values())


# -- refreshed only when due (touch in storage/lua/_prelude.lua) ----------------------
# The rule: an expiring thread's keys are set to the full TTL when a write finds less
# than half of it left (or more than all of it: the TTL was shortened), or a key that
# did not exist at the last refresh. So a thread expires between ttl/2 and ttl after
# its last write; with a cold tier, never while it is ahead of its archive.

HOUR_MS = 3_600_000


def expiry_commands(client: redis.Redis) -> int:
    return sum(commands_called(client, c) for c in ("pexpire", "persist", "pexpireat"))


def test_a_burst_of_appends_refreshes_the_expiry_once(redis_client: redis.Redis) -> None:
    hot = HotStore(redis_client, ttl_seconds=3600)
    hot.create("t")
    hot.append("t", [msg("m0")])
    reset_command_stats(redis_client)
    for i in range(1, 50):
        hot.append("t", [msg(f"m{i}")])
    assert expiry_commands(redis_client) == 0
    assert all(HOUR_MS - 60_000 < t <= HOUR_MS for t in ttls(redis_client, hot, "t").values())


def test_a_write_just_before_the_refresh_is_due_keeps_more_than_half_the_ttl(
    redis_client: redis.Redis,
) -> None:
    hot = HotStore(redis_client, ttl_seconds=3600)
    hot.create("t", state={"s": 1})
    hot.append("t", [msg("m0")])
    age_expiry(hot, "t", HOUR_MS // 2 + 30_000)  # not yet due
    hot.append("t", [msg("m1")])
    left = ttls(redis_client, hot, "t")
    assert set(left) == {"meta", "msgs", "ids", "state"}
    assert all(HOUR_MS // 2 < t <= HOUR_MS // 2 + 30_000 for t in left.values()), left
    age_expiry(hot, "t", HOUR_MS // 2 - 1)  # due now
    hot.append("t", [msg("m1")])  # a redelivered append is a write too
    assert all(HOUR_MS - 60_000 < t <= HOUR_MS for t in ttls(redis_client, hot, "t").values())


def test_a_shortened_ttl_applies_at_the_next_write(redis_client: redis.Redis) -> None:
    HotStore(redis_client, ttl_seconds=3600).create("t")
    HotStore(redis_client, ttl_seconds=3600).append("t", [msg("m0")])
    short = HotStore(redis_client, ttl_seconds=60)
    short.append("t", [msg("m1")])
    assert all(0 < t <= 60_000 for t in ttls(redis_client, short, "t").values())


def test_keys_created_after_the_last_refresh_get_the_ttl(redis_client: redis.Redis) -> None:
    hot = HotStore(redis_client, ttl_seconds=3600)
    hot.create("t")  # no list, ledger or state yet
    hot.append("t", [msg("m0")])  # creates the list and the ledger
    hot.save_state("t", {"s": 1})  # creates the state
    assert set(ttls(redis_client, hot, "t")) == {"meta", "msgs", "ids", "state"}
    assert -1 not in ttls(redis_client, hot, "t").values()
    # a key that a script without an expiry of its own created (a turn record)
    runs = hot.keys("t").runs
    redis_client.hset(runs, "turn-1", "{}")
    hot.append("t", [msg("m1")])
    assert 0 < redis_client.pttl(runs) <= HOUR_MS


def test_a_rewritten_state_keeps_its_ttl(redis_client: redis.Redis) -> None:
    """SET drops a key's expiry: the scripts that rewrite keys refresh them all."""
    hot = HotStore(redis_client, ttl_seconds=3600)
    hot.create("t", state={"s": 0})
    for i in range(1, 4):
        hot.append("t", [msg(f"m{i}")])
        hot.save_state("t", {"s": i})
        assert -1 not in ttls(redis_client, hot, "t").values()


def test_with_a_cold_tier_appends_ahead_of_the_archive_issue_no_expiry_commands(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    from storage.cold import FileColdStore

    threads = Threads(HotStore(redis_client, ttl_seconds=3600), FileColdStore(tmp_path))
    threads.open("t", "new")
    threads.append("t", [msg("m0")])
    reset_command_stats(redis_client)
    for i in range(1, 30):
        threads.append("t", [msg(f"m{i}")])
    assert expiry_commands(redis_client) == 0
    assert set(ttls(redis_client, threads.hot, "t").values()) == {-1}


def test_with_a_cold_tier_an_archived_thread_written_just_before_due_still_expires(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    from storage.cold import FileColdStore

    threads = Threads(HotStore(redis_client, ttl_seconds=3600), FileColdStore(tmp_path))
    threads.open("t", "new")
    threads.append("t", [msg("m0")])
    threads.flush("t", evict=False)  # equal to its archive: the TTL runs
    age_expiry(threads.hot, "t", HOUR_MS // 2 + 30_000)
    threads.append("t", [msg("m0")])  # a redelivery: still equal, not yet due
    left = ttls(redis_client, threads.hot, "t")
    assert all(HOUR_MS // 2 < t <= HOUR_MS // 2 + 30_000 for t in left.values()), left
    age_expiry(threads.hot, "t", HOUR_MS // 2 - 1)
    threads.append("t", [msg("m0")])  # due: the full TTL again
    assert all(
        HOUR_MS - 60_000 < t <= HOUR_MS for t in ttls(redis_client, threads.hot, "t").values()
    )
    threads.append("t", [msg("m1")])  # ahead again: no expiry, whatever was due
    assert set(ttls(redis_client, threads.hot, "t").values()) == {-1}

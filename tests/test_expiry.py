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
from tasks.app import build_threads
from tests.conftest import msg

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
    from celeryconfig import agent_threads as defaults

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

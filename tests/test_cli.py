"""The `agent-threads` command, run through click's CliRunner against the real harness:
a real redis-server, moto's S3 server or a file cold store, and (for the commands
that send tasks) the session's embedded Celery worker. The CLI is pointed at the
test servers through the AGENT_THREADS_* variables, like a user's shell would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from storage.embedded import EmbeddedRedis
from storage.snapshot import Snapshot
from storage.tiered import Threads
from tasks.app import settings
from tasks.app import threads as worker_threads
from tasks.cli import main
from tasks.cli.ops.durations import parse_duration
from tasks.cli.ops.retention import prune_cold
from tasks.stores import build_threads
from tests.conftest import backdate, msg, redis_contents
from tests.servers import MotoServer

# -- harness ----------------------------------------------------------------------------------


@dataclass
class Tiers:
    """Storage for one test and the environment that points the CLI at it."""

    env: dict[str, str]
    store: Threads

    def run(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(main, list(args), env=self.env, input=input)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
        return result

    def cold_ids(self) -> list[str]:
        return sorted(item.thread_id for item in self.store.cold.list())


def _tiers(redis_server: EmbeddedRedis, cold_url: str, **extra: str) -> Iterator[Tiers]:
    env = {
        "AGENT_THREADS_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "AGENT_THREADS_COLD_URL": cold_url,
        "COLUMNS": "160",
        **extra,
    }
    overrides = {"redis_url": env["AGENT_THREADS_REDIS_URL"], "cold_url": cold_url}
    if "AGENT_THREADS_S3_ENDPOINT_URL" in extra:
        overrides["s3_endpoint_url"] = extra["AGENT_THREADS_S3_ENDPOINT_URL"]
    store = build_threads({**settings(), **overrides})
    try:
        yield Tiers(env, store)
    finally:
        store.hot.redis.close()


@pytest.fixture
def s3_tiers(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    s3_server: MotoServer,
    s3_bucket: tuple[Any, str],
) -> Iterator[Tiers]:
    _, bucket = s3_bucket
    yield from _tiers(
        redis_server, f"s3://{bucket}/threads", AGENT_THREADS_S3_ENDPOINT_URL=s3_server.url
    )


@pytest.fixture
def file_tiers(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Tiers]:
    yield from _tiers(redis_server, f"file://{tmp_path / 'cold'}")


@pytest.fixture(params=["s3", "file"])
def tiers(request: pytest.FixtureRequest) -> Tiers:
    fixture: Tiers = request.getfixturevalue(f"{request.param}_tiers")
    return fixture


def exact(store: Threads, thread_id: str) -> Snapshot:
    """Everything a hot thread holds, read in one script."""
    snapshot = store.hot.snapshot(thread_id)
    assert snapshot is not None
    return snapshot


def rich_thread(store: Threads, thread_id: str) -> Snapshot:
    """A hot thread with retired ids, a finished turn, state, odd text and a history
    of flushes and hydrates; returns its exact contents."""
    store.open(thread_id, "new", state={"plan": ["a"], "n": 1})
    store.append(thread_id, [msg("m1"), msg("m2", 'é ☃ "quoted" \\ tab\t'), msg("m3")])
    store.replace_all(thread_id, [msg("m1"), msg("m3")])  # m2 is retired
    store.acquire_lease(thread_id, "turn-1", 60_000)
    store.append(thread_id, [msg("m4", "reply")], owner="turn-1")
    store.flush(thread_id, evict=False, release_owner="turn-1")  # turn-1 finished
    store.save_state(thread_id, {"plan": ["a", "b"], "n": 2})
    store.flush(thread_id)  # archived with its finished turn, evicted
    store.hydrate(thread_id)
    snapshot = exact(store, thread_id)
    assert snapshot.retired_ids == ("m2",)
    assert snapshot.finished_turns == ("turn-1",)
    return snapshot


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60", 60), ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1h30m", 5400)],
)
def test_durations_accept_plain_seconds_and_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "-5s", "1h 2", "inf"])
def test_invalid_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# -- demo -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_three_turns_through_a_real_worker_and_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_THREADS_")}
    done = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        "started embedded redis-server",
        "turn 1 (new)",
        "turn 2 (continue)",
        "turn 3 (fork of turn 1)",
        "  open",  # each turn opens (create | hydrate | fork), leases and appends in one step
        "run:demo.scripted_agent",
        "tool runs: call-0-0 x1, call-0-1 x1",  # turn 1's two tool calls, each run once
        "tier after the turn: hot, archived (cold v10 = hot v10)",  # evict="idle": kept hot
        "idle flush: 2 evicted, 0 kept hot",  # what the beat does once they are idle
        "thread 'demo-trip': tier cold, version 10, 8 messages",
        "thread 'demo-trip-alt': tier cold, version 4, 8 messages",
        "nothing was doubled",
        "stopped the celery worker",
        "stopped embedded redis-server",
    ):
        assert expected in out, f"{expected!r} missing from the demo output:\n{out}"
    assert list((tmp_path / ".agent-threads" / "cold").rglob("*.json.gz"))


def test_demo_with_anthropic_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["demo", "--model", "anthropic"])
    assert result.exit_code != 0
    assert "ANTHROPIC_API_KEY" in result.output


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_shows_a_hot_and_a_cold_thread(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    store.open("cli-t1", "new", state={"step": 2})
    store.append(
        "cli-t1",
        [
            msg("m1", "hello there"),
            {
                "id": "a1",
                "body": {
                    "role": "assistant",
                    "content": "checking",
                    "tool_calls": [{"id": "c1", "name": "weather", "args": {"city": "Bern"}}],
                },
            },
        ],
    )
    store.acquire_lease("cli-t1", "turn-9", 60_000)

    hot = s3_tiers.ok("inspect", "cli-t1").output
    assert "thread 'cli-t1': tier hot, version 2, 2 messages" in hot
    assert re.search(r"lease +turn-9 \(\d+s left\)", hot)
    assert re.search(r"archive +none \(never flushed\)", hot)
    assert "hot TTL" in hot
    assert "hello there" in hot
    assert '→ weather({"city": "Bern"})' in hot
    assert '"step": 2' in hot

    store.release_lease("cli-t1", "turn-9")
    flushed = store.flush("cli-t1")
    cold = s3_tiers.ok("inspect", "cli-t1").output
    assert "thread 'cli-t1': tier cold, version 2" in cold
    assert re.search(rf"archive +v2 etag {flushed.etag}\n", cold)
    assert "hello there" in cold
    assert "lease" not in cold
    assert not store.hot.exists("cli-t1")  # inspect did not restore it


def test_inspect_json_reports_tier_lease_archive_and_fork(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    store.open("src", "new")
    store.append("src", [msg("m1"), msg("m2")])
    store.flush("src", evict=False)
    store.append("src", [msg("m3")])
    store.open("kid", "fork", source="src", up_to_id="m1")
    store.acquire_lease("src", "turn-2", 60_000)

    src = json.loads(s3_tiers.ok("inspect", "src", "--json").output)
    assert src["tier"] == "hot"
    assert src["version"] == 3
    assert src["archive"]["version"] == 2
    assert src["archive"]["etag"] == store.cold.head("src")
    assert src["lease"]["owner"] == "turn-2"
    assert 0 < src["lease"]["ttl_ms"] <= 60_000
    assert src["ttl_ms"] is None  # ahead of its archive: Redis may not expire it
    assert [m["id"] for m in src["messages"]] == ["m1", "m2", "m3"]
    kid = json.loads(s3_tiers.ok("inspect", "kid", "--json", "--last", "1").output)
    assert (kid["parent"], kid["fork_point"], kid["length"]) == ("src", "m1", 1)
    assert kid["archive"] is None
    assert kid["lease"] is None


def test_inspect_refuses_unknown_and_invalid_thread_ids(s3_tiers: Tiers) -> None:
    missing = s3_tiers.run("inspect", "nope")
    assert missing.exit_code == 1
    assert "thread 'nope' not found; it exists in no tier" in missing.output
    invalid = s3_tiers.run("inspect", "a\tb")
    assert invalid.exit_code == 1
    assert "invalid thread id" in invalid.output
    assert "control characters" in invalid.output


ODD_ID = "[bold]user@example.com/chat #1 :smile: é{x}[/]"
"""Rich markup, an emoji code, ``#``, a slash, a space and braces: shown as given."""


def test_commands_show_and_take_any_thread_id_as_given(s3_tiers: Tiers, tmp_path: Path) -> None:
    store = s3_tiers.store
    store.open(ODD_ID, "new", state={"who": ODD_ID})
    store.append(ODD_ID, [msg("m1", "[red]not red[/red] :smile:")])
    hot = s3_tiers.ok("inspect", ODD_ID).output
    assert f"thread '{ODD_ID}': tier hot, version 2, 1 message" in hot
    assert "[red]not red[/red] :smile:" in hot
    assert json.loads(s3_tiers.ok("inspect", ODD_ID, "--json").output)["thread_id"] == ODD_ID
    assert ODD_ID in s3_tiers.ok("ls").output
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# one odd id\n{ODD_ID}\n", encoding="utf-8")
    assert "1 archived" in s3_tiers.ok("flush", ODD_ID).output
    assert s3_tiers.cold_ids() == [ODD_ID]
    assert "1 restored" in s3_tiers.ok("hydrate", "--from-file", str(ids)).output
    exported = s3_tiers.ok("export", ODD_ID, "-o", str(tmp_path / "odd.jsonl")).output
    assert f"exported thread '{ODD_ID}'" in exported
    prompt = s3_tiers.run("delete", ODD_ID, input="n\n").output
    assert f"({ODD_ID})?" in prompt


def test_inspect_shows_the_last_messages_of_a_long_thread(s3_tiers: Tiers) -> None:
    s3_tiers.store.open("long", "new")
    s3_tiers.store.append("long", [msg(f"m{i}") for i in range(60)])

    out = s3_tiers.ok("inspect", "long").output
    assert "text of m59" in out
    assert "text of m9 " not in out
    assert "(the first 10 of 60 messages not shown; --last 0 shows all)" in out
    assert "text of m0" in s3_tiers.ok("inspect", "long", "--last", "0").output


# -- ls / stats ---------------------------------------------------------------------------------


def test_ls_orders_hot_threads_by_last_activity(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    for thread_id in ("t-old", "t-new", "t-mid"):
        store.open(thread_id, "new")
    store.append("t-mid", [msg("m1"), msg("m2")])
    store.acquire_lease("t-old", "turn-7", 60_000)
    now = int(time.time() * 1000)
    for thread_id, ago_ms in (("t-old", 30_000), ("t-new", 1_000), ("t-mid", 20_000)):
        backdate(store.hot, thread_id, now - ago_ms, meta=False)

    listed = json.loads(s3_tiers.ok("ls", "--json").output)
    assert [e["thread_id"] for e in listed] == ["t-new", "t-mid", "t-old"]
    assert [e["length"] for e in listed] == [0, 2, 0]
    assert listed[2]["lease_owner"] == "turn-7"

    table = s3_tiers.ok("ls").output
    assert table.index("t-new") < table.index("t-mid") < table.index("t-old")
    assert "turn-7" in table

    idle = json.loads(s3_tiers.ok("ls", "--idle-longer-than", "15s", "--json").output)
    assert [e["thread_id"] for e in idle] == ["t-old", "t-mid"]  # oldest first
    limited = json.loads(s3_tiers.ok("ls", "--limit", "1", "--json").output)
    assert [e["thread_id"] for e in limited] == ["t-new"]
    assert "no hot threads idle that long" in s3_tiers.ok("ls", "--idle-longer-than", "1h").output


def test_stats_counts_hot_leased_and_cold_threads(
    s3_tiers: Tiers, redis_client: redis.Redis
) -> None:
    store = s3_tiers.store
    for thread_id in ("s1", "s2", "s3", "c1", "c2"):
        store.open(thread_id, "new")
        store.append(thread_id, [msg("m1")])
    store.flush("c1")
    store.flush("c2")
    store.flush("s3", evict=False)
    store.acquire_lease("s1", "turn-1", 60_000)

    stats = json.loads(s3_tiers.ok("stats", "--json").output)

    sizes = [item.size for item in store.cold.list()]
    assert stats["hot_threads"] == 3
    assert stats["leased_threads"] == 1
    assert stats["cold_objects"] == 3 == len(sizes)
    assert stats["cold_bytes"] == sum(sizes)
    assert stats["redis_keys"] == redis_client.dbsize()
    assert stats["redis_used_memory"] > 0
    table = s3_tiers.ok("stats").output
    assert re.search(r"hot threads +3\b", table)
    assert re.search(r"leased threads +1\b", table)
    assert re.search(r"cold archives +3\b", table)
    assert json.loads(s3_tiers.ok("stats", "--json", "--no-cold").output)["cold_objects"] is None


# -- flush / hydrate ----------------------------------------------------------------------------


def test_flush_idle_command_evicts_idle_threads(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    store.open("cli-idle", "new")
    store.open("cli-busy", "new")
    backdate(store.hot, "cli-idle", 1)
    result = s3_tiers.ok("flush-idle", "--older-than", "1m")
    assert "1 idle, 1 evicted, 0 kept hot, 0 failed" in result.output
    assert not store.hot.exists("cli-idle")
    assert store.hot.exists("cli-busy")
    assert s3_tiers.run("flush-idle", "--older-than", "soon").exit_code == 2


def test_flush_many_reports_counts_and_a_failure_does_not_stop_the_rest(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    for thread_id in ("f1", "f2", "f3", "f4"):
        store.open(thread_id, "new")
        store.append(thread_id, [msg("m1")])
    store.flush("f3", evict=False)  # archive current: the next flush uploads nothing
    store.flush("f4")  # already cold
    store.acquire_lease("f2", "turn-1", 60_000)  # archived but kept hot

    result = s3_tiers.run("flush", "f1", "bad\tid", "f2", "f3", "gone", "f4")

    assert result.exit_code == 1
    assert (
        "flush: 6 threads: 2 archived, 2 unchanged, 1 absent, 1 failed (2 evicted, 1 kept hot)"
        in result.output
    )
    assert "failed bad\tid: invalid thread id" in result.output
    assert not store.hot.exists("f1")
    assert store.hot.exists("f2")
    assert not store.hot.exists("f3")
    assert s3_tiers.cold_ids() == ["f1", "f2", "f3", "f4"]
    assert s3_tiers.run("flush").exit_code == 2  # nothing selected


def test_flush_all_idle_flushes_only_idle_threads(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    for thread_id in ("i1", "i2", "busy"):
        store.open(thread_id, "new")
    backdate(store.hot, "i1", 1)
    backdate(store.hot, "i2", 2)

    result = s3_tiers.ok("flush", "--all-idle", "--older-than", "10m")

    assert "flush: 2 threads: 2 archived, 0 unchanged, 0 absent, 0 failed" in result.output
    assert s3_tiers.cold_ids() == ["i1", "i2"]
    assert store.hot.exists("busy")


def test_hydrate_many_from_a_file_with_counts_and_failures(s3_tiers: Tiers, tmp_path: Path) -> None:
    store = s3_tiers.store
    for thread_id in ("h1", "h2", "h3", "bad"):
        store.open(thread_id, "new")
        store.append(thread_id, [msg("m1")])
        store.flush(thread_id)
    store.hydrate("h3")  # already hot
    etag = store.cold.head("bad")
    store.cold.write_bytes("bad", b"\x1f\x8bnot gzip at all", etag)  # corrupt archive
    ids = tmp_path / "ids.txt"
    ids.write_text("# threads to warm up\nh1\n\n# corrupt:\nbad\r\nh3\nmissing\nh1\n")

    result = s3_tiers.run("hydrate", "h2", "--from-file", str(ids))

    assert result.exit_code == 1
    assert "hydrate: 5 threads: 2 restored, 1 hot, 1 absent, 1 failed" in result.output
    assert "failed bad: snapshot" in result.output
    assert all(store.hot.exists(t) for t in ("h1", "h2", "h3"))
    assert not store.hot.exists("bad")
    piped = s3_tiers.ok("hydrate", "--from-file", "-", input="h1\nh2\n")
    assert "hydrate: 2 threads: 0 restored, 2 hot, 0 absent, 0 failed" in piped.output


def test_flush_and_hydrate_via_workers(celery_stack: Celery, redis_client: redis.Redis) -> None:
    store = worker_threads()  # the embedded worker's storage (the app's settings)
    ids = [f"vw-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for thread_id in ids:
        store.open(thread_id, "new")
        store.append(thread_id, [msg("m1")])
    runner = CliRunner()

    flushed = runner.invoke(main, ["flush", "--via-workers", *ids, "bad\tid"])
    assert flushed.exit_code == 1, flushed.output
    assert "flush: 4 threads: 3 archived, 0 unchanged, 0 absent, 1 failed" in flushed.output
    assert not any(store.hot.exists(t) for t in ids)

    hydrated = runner.invoke(main, ["hydrate", "--via-workers", *ids])
    assert hydrated.exit_code == 0, hydrated.output
    assert "hydrate: 3 threads: 3 restored, 0 hot, 0 absent, 0 failed" in hydrated.output
    assert all(store.hot.exists(t) for t in ids)
    for thread_id in ids:
        store.delete(thread_id)


# -- export / import ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "gzip"])
def test_export_import_round_trips_a_thread_exactly(tiers: Tiers, tmp_path: Path, fmt: str) -> None:
    store = tiers.store
    before = rich_thread(store, "rt")
    path = tmp_path / ("rt.json.gz" if fmt == "gzip" else "rt.json")
    tiers.ok("export", "rt", "-o", str(path))
    first_export = path.read_bytes()
    assert first_export[:2] == (b"\x1f\x8b" if fmt == "gzip" else b'{"')
    tiers.ok("delete", "rt", "--yes")

    imported = tiers.ok("import", str(path))

    assert (
        f"imported thread 'rt': version {before.version}, 3 messages, now cold" in imported.output
    )
    found = store.cold.read("rt")
    assert found is not None
    assert found[0] == before  # records byte for byte, ids, retired ids, state, turns, epoch
    assert store.hydrate("rt").status == "restored"
    assert exact(store, "rt") == before
    assert store.hot.info("rt").cold_version == before.version  # the next flush uploads nothing
    assert store.flush("rt").status == "unchanged"
    tiers.ok("export", "rt", "-o", str(path))
    assert path.read_bytes() == first_export  # the export itself round-trips byte for byte


def test_export_writes_readable_json_lines_to_stdout(s3_tiers: Tiers) -> None:
    snapshot = rich_thread(s3_tiers.store, "out")

    result = s3_tiers.ok("export", "out")

    lines = result.stdout_bytes.split(b"\n")
    header, index = json.loads(lines[0]), json.loads(lines[1])
    assert header["format"] == "agent-threads/snapshot"
    assert header["schema"] == 1
    assert (header["thread_id"], header["version"], header["count"]) == ("out", 6, 3)
    assert header["checksum"].startswith("sha256:")
    assert index["retired_ids"] == ["m2"]
    assert index["turns"] == ["turn-1"]
    assert tuple(lines[2:]) == snapshot.records


def test_import_as_copies_a_cold_thread_into_the_hot_tier(s3_tiers: Tiers, tmp_path: Path) -> None:
    before = rich_thread(s3_tiers.store, "orig")
    s3_tiers.store.flush("orig")  # export from the cold tier this time
    path = tmp_path / "orig.json"
    s3_tiers.ok("export", "orig", "-o", str(path))

    imported = s3_tiers.ok("import", str(path), "--as", "copy", "--hot")

    copy = exact(s3_tiers.store, "copy")
    assert copy == replace(before, thread_id="copy", epoch=copy.epoch)
    assert copy.epoch != before.epoch  # a copy is a new incarnation
    original = s3_tiers.store.cold.read("orig")
    assert original is not None
    assert original[0] == before  # the source is untouched
    assert "imported thread 'copy' from 'orig'" in imported.output
    assert "now hot" in imported.output
    assert s3_tiers.store.append("copy", [msg("m5")]).appended_ids == ("m5",)
    assert s3_tiers.store.append("copy", [msg("m2")]).skipped_ids == ("m2",)  # still retired


def test_import_refuses_an_existing_thread_unless_forced(
    s3_tiers: Tiers, redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = s3_tiers.store
    old = rich_thread(store, "taken")
    path = tmp_path / "taken.json"
    s3_tiers.ok("export", "taken", "-o", str(path))
    store.append("taken", [msg("m9")])  # the thread moves on
    store.flush("taken", evict=False)
    picture, cold = redis_contents(redis_client), s3_tiers.cold_ids()
    etag = store.cold.head("taken")

    refused = s3_tiers.run("import", str(path))

    assert refused.exit_code == 1
    assert "import refused: thread 'taken' already exists: it is hot" in refused.output
    assert "nothing was written" in refused.output
    assert redis_contents(redis_client) == picture
    assert (s3_tiers.cold_ids(), store.cold.head("taken")) == (cold, etag)

    store.acquire_lease("taken", "turn-x", 60_000)
    leased = s3_tiers.run("import", str(path), "--force")
    assert leased.exit_code == 1
    assert "leased by turn 'turn-x'" in leased.output
    assert store.cold.head("taken") == etag
    store.release_lease("taken", "turn-x")

    forced = s3_tiers.ok("import", str(path), "--force")
    assert "replacing the existing thread" in forced.output
    assert not store.hot.exists("taken")
    found = store.cold.read("taken")
    assert found is not None
    assert found[0] == old
    assert store.hydrate("taken").status == "restored"
    assert exact(store, "taken") == old


def _flip_a_record_byte(data: bytes) -> bytes:
    return data[:-4] + bytes([data[-4] ^ 0x01]) + data[-3:]


def _schema_2(data: bytes) -> bytes:
    header, _, rest = data.partition(b"\n")
    return json.dumps({**json.loads(header), "schema": 2}).encode() + b"\n" + rest


CORRUPTIONS = {
    "garbage": lambda _good: b"\x00not a snapshot\xff",
    "empty": lambda _good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "checksum-mismatch": _flip_a_record_byte,
    "foreign-json": lambda _good: b'{"hello": "world"}\n',
    "schema-2": _schema_2,
    "bad-gzip": lambda good: b"\x1f\x8b" + good[:40],
    "gzip-of-foreign": lambda _good: zlib.compress(b'{"a": 1}\n', wbits=31),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_import_refuses_a_corrupt_or_foreign_file_and_writes_nothing(
    s3_tiers: Tiers, redis_client: redis.Redis, tmp_path: Path, corruption: str
) -> None:
    store = s3_tiers.store
    rich_thread(store, "good")
    good = s3_tiers.ok("export", "good").stdout_bytes
    store.delete("good")
    store.open("bystander", "new")
    path = tmp_path / "bad.json"
    path.write_bytes(CORRUPTIONS[corruption](good))
    picture, cold = redis_contents(redis_client), s3_tiers.cold_ids()

    result = s3_tiers.run("import", str(path), "--force")

    assert result.exit_code == 1, result.output
    assert "import refused:" in result.output
    assert "nothing was written" in result.output
    assert redis_contents(redis_client) == picture
    assert s3_tiers.cold_ids() == cold


def test_import_refuses_a_snapshot_of_another_namespace_unless_asked(
    s3_tiers: Tiers, tmp_path: Path
) -> None:
    tenant = {**s3_tiers.env, "AGENT_THREADS_NAMESPACE": "tenant-b"}
    runner = CliRunner()
    foreign = build_threads(
        {
            **settings(),
            "redis_url": s3_tiers.env["AGENT_THREADS_REDIS_URL"],
            "cold_url": f"file://{tmp_path / 'b'}",
            "namespace": "tenant-b",
        }
    )
    rich_thread(foreign, "shared")
    path = tmp_path / "b.json"
    tenant["AGENT_THREADS_COLD_URL"] = f"file://{tmp_path / 'b'}"
    exported = runner.invoke(main, ["export", "shared", "-o", str(path)], env=tenant)
    assert exported.exit_code == 0, exported.output

    refused = s3_tiers.run("import", str(path))
    assert refused.exit_code == 1
    assert "belongs to namespace 'tenant-b', not 'at'" in refused.output
    assert s3_tiers.cold_ids() == []

    s3_tiers.ok("import", str(path), "--any-namespace", "--hot")
    assert exact(s3_tiers.store, "shared").namespace == "at"
    assert [m["id"] for m in s3_tiers.store.load("shared")] == ["m1", "m3", "m4"]
    foreign.hot.redis.close()


# -- delete --------------------------------------------------------------------------------------


def test_delete_asks_first_and_removes_both_tiers(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    for thread_id in ("d1", "d2"):
        store.open(thread_id, "new")
        store.append(thread_id, [msg("m1")])
    store.flush("d1")  # cold
    store.flush("d2", evict=False)  # hot and cold

    declined = s3_tiers.run("delete", "d1", "d2", input="n\n")
    assert declined.exit_code == 1
    assert "Delete 2 thread(s) from both tiers (d1, d2)?" in declined.output
    assert s3_tiers.cold_ids() == ["d1", "d2"]

    confirmed = s3_tiers.ok("delete", "d1", "d2", "d3", input="y\n")
    assert "delete: 3 threads: 2 deleted, 1 absent, 0 failed" in confirmed.output
    assert s3_tiers.cold_ids() == []
    assert not store.hot.exists("d2")
    assert "0 deleted, 1 absent" in s3_tiers.ok("delete", "d1", "--yes").output


# -- retention ------------------------------------------------------------------------------------


def _archive(store: Threads, thread_id: str) -> None:
    """An archived thread whose eviction is long past (no eviction marker left)."""
    store.open(thread_id, "new")
    store.append(thread_id, [msg("m1")])
    store.flush(thread_id)
    store.hot.redis.delete(store.hot.keys(thread_id).archived)


def test_cold_prune_dry_run_lists_then_deletes_old_archives(
    file_tiers: Tiers, tmp_path: Path
) -> None:
    store = file_tiers.store
    for thread_id in ("old-1", "old-2", "old-hot", "recent"):
        _archive(store, thread_id)
    store.open("just-evicted", "new")
    store.flush("just-evicted")  # its eviction marker says it was used minutes ago
    long_ago = time.time() - 40 * 86400
    for thread_id in ("old-1", "old-2", "old-hot", "just-evicted"):
        path = Path(file_tiers.env["AGENT_THREADS_COLD_URL"][7:]) / "threads"
        archive = next(path.glob(f"*/{thread_id}.json.gz"))
        os.utime(archive, (long_ago, long_ago))
    store.hydrate("old-hot")  # in use: never pruned

    dry = file_tiers.ok("cold-prune", "--older-than", "30d", "--dry-run")

    assert "4 archives last written before" in dry.output
    assert "would delete 2 (" in dry.output
    assert "kept 2 in use, 0 failed" in dry.output
    for line in ("old-1", "old-2"):
        assert any(line in row and "would delete" in row for row in dry.output.splitlines())
    assert file_tiers.cold_ids() == ["just-evicted", "old-1", "old-2", "old-hot", "recent"]

    real = json.loads(file_tiers.ok("cold-prune", "--older-than", "30d", "--json").output)

    statuses = {a["thread_id"]: a["status"] for a in real["archives"]}
    assert statuses == {
        "old-1": "deleted",
        "old-2": "deleted",
        "old-hot": "in use",
        "just-evicted": "in use",
    }
    assert file_tiers.cold_ids() == ["just-evicted", "old-hot", "recent"]
    assert store.hot.exists("old-hot")


def test_cold_prune_on_s3_judges_ages_as_of_a_given_time(s3_tiers: Tiers) -> None:
    store = s3_tiers.store
    for thread_id in ("p1", "p2", "p3"):
        _archive(store, thread_id)
    store.hydrate("p3")
    later = (datetime.now(UTC) + timedelta(days=31)).isoformat()

    assert "deleted 0 (0 B)" in s3_tiers.ok("cold-prune", "--older-than", "30d").output
    dry = s3_tiers.ok("cold-prune", "--older-than", "30d", "--as-of", later, "--dry-run")
    assert "would delete 2" in dry.output
    assert s3_tiers.cold_ids() == ["p1", "p2", "p3"]

    report = prune_cold(store, 30 * 86400, now=datetime.now(UTC) + timedelta(days=31))
    assert sorted(item.thread_id for item in report.deleted) == ["p1", "p2"]
    assert report.in_use == ("p3",)
    assert s3_tiers.cold_ids() == ["p3"]


# -- beat ---------------------------------------------------------------------------------


def test_beat_command_schedules_flush_idle_on_the_workers(
    celery_stack: Celery, redis_client: redis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    store = worker_threads()
    thread_id = f"beat-{uuid.uuid4().hex[:8]}"
    store.open(thread_id, "new")
    backdate(store.hot, thread_id, 1)  # idle for decades
    base = f"redis://127.0.0.1:{redis_server.port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENT_THREADS_")},
        "AGENT_THREADS_BROKER_URL": f"{base}/1",
        "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
        "AGENT_THREADS_FLUSH_IDLE_EVERY": "0.5",
    }
    beat = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "beat", "--schedule", str(tmp_path / "schedule")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while store.hot.exists(thread_id) and time.monotonic() < deadline:
            assert beat.poll() is None, beat.stderr.read().decode() if beat.stderr else ""
            time.sleep(0.1)
        assert not store.hot.exists(thread_id), "beat never had the thread flushed"
        assert store.cold.head(thread_id) is not None
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        store.delete(thread_id)

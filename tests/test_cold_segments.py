"""Cold schema 2 through ``Threads``: a flush uploads only what was appended since the
archive, as one segment; rewrites, migration and compaction write a new base; parts
no manifest references are collected after their delay; every guarantee holds on S3
(moto) and on files."""

from __future__ import annotations

import os
from typing import Any

import pytest

from storage import HotStore, SnapshotCorrupt
from storage.archive import MAX_SEGMENTS, Layout
from storage.cold import ColdStore, S3ColdStore
from storage.results import FlushSource
from storage.snapshot import encode_snapshot
from storage.tiered import Threads
from tests.conftest import msg


def big(message_id: str) -> dict[str, Any]:
    """A ~600-byte chat record that compresses like real text does (not 100:1)."""
    return msg(message_id, f"{message_id}: " + os.urandom(280).hex())


def layout_of(threads: Threads, thread_id: str) -> Layout:
    found = threads.cold.read(thread_id)
    assert found is not None
    assert found[0].layout is not None
    return found[0].layout


def assert_archive_is_the_hot_copy(threads: Threads, thread_id: str) -> None:
    hot = threads.hot.snapshot(thread_id)
    found = threads.cold.read(thread_id)
    assert found is not None
    archived = found[0]
    assert (archived.ids, archived.records) == (hot.ids, hot.records)
    assert (archived.version, archived.head, archived.state) == (hot.version, hot.head, hot.state)
    assert set(archived.finished_turns) == set(hot.finished_turns)


class SpyHot(HotStore):
    """A HotStore that records which record ranges a flush reads."""

    reads: list[tuple[int, int]]

    def read_records(
        self, thread_id: str, source: FlushSource, start: int, **options: Any
    ) -> tuple[list[bytes], list[Any], list[Any]]:
        stop = options.get("stop")
        self.reads.append((start, source.length if stop is None else stop))
        return super().read_records(thread_id, source, start, **options)


def test_a_flush_uploads_and_reads_only_the_records_appended_since_the_archive(
    hot: HotStore, cold: ColdStore
) -> None:
    spy = SpyHot(hot.redis)
    spy.reads = []
    threads = Threads(spy, cold)
    threads.open("t1", "new")
    threads.append("t1", [big(f"m{i}") for i in range(300)])
    base = threads.flush("t1", evict=False)
    threads.append("t1", [big("u1"), big("a1")])
    spy.reads.clear()

    segment = threads.flush("t1", evict=False)

    assert spy.reads == [(300, 302)]  # never the 300 archived records
    assert segment.status == "archived"
    assert segment.size_bytes * 20 < base.size_bytes
    layout = layout_of(threads, "t1")
    assert [(p.kind, p.first, p.count) for p in layout.parts] == [
        ("base", 0, 300),
        ("segment", 300, 2),
    ]
    assert_archive_is_the_hot_copy(threads, "t1")


def test_many_turns_keep_segments_bounded_and_the_archive_exact(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [big(f"m{i}") for i in range(50)])
    threads.flush("t1", evict=False)
    sizes = []
    for turn in range(120):
        threads.append("t1", [big(f"u{turn}"), big(f"a{turn}")])
        sizes.append(threads.flush("t1", evict=False).size_bytes)
        layout = layout_of(threads, "t1")
        assert len(layout.segments) <= MAX_SEGMENTS
        raws = [p.raw for p in layout.segments]
        assert raws == sorted(raws, reverse=True)  # geometric: older segments are larger
    assert_archive_is_the_hot_copy(threads, "t1")
    threads.flush("t1")  # evict, then restore from the parts
    assert threads.hydrate("t1").status == "restored"
    assert [m["id"] for m in threads.load("t1")][-2:] == ["u119", "a119"]
    assert threads.hot.info("t1").length == 50 + 240


@pytest.mark.parametrize("rewrite", ["truncate", "replace", "put_first", "put_in_place"])
def test_a_rewrite_makes_the_next_flush_write_a_new_base(threads: Threads, rewrite: str) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg(f"m{i}") for i in range(10)])
    threads.flush("t1", evict=False)
    threads.append("t1", [msg("m10")])
    threads.flush("t1", evict=False)
    assert len(layout_of(threads, "t1").parts) == 2
    if rewrite == "truncate":
        threads.truncate_from("t1", "m5")
    elif rewrite == "replace":
        threads.replace_all("t1", [msg("n1"), msg("n2")])
    elif rewrite == "put_first":
        threads.put_record("t1", msg("system", "be brief"), first=True)
    else:
        threads.put_record("t1", msg("m3", "edited"))
    threads.append("t1", [msg("late")])

    threads.flush("t1", evict=False)

    assert len(layout_of(threads, "t1").parts) == 1
    assert_archive_is_the_hot_copy(threads, "t1")
    expected = threads.hot.snapshot("t1")
    threads.flush("t1")
    threads.hydrate("t1")
    assert threads.hot.snapshot("t1").records == expected.records


def test_a_retired_id_put_back_at_the_end_writes_a_new_base(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("a"), msg("b")])
    threads.replace_all("t1", [msg("c")])  # a and b retired
    threads.flush("t1", evict=False)
    threads.put_record("t1", msg("a", "back"))

    threads.flush("t1")

    assert threads.hydrate("t1").status == "restored"
    assert [m["id"] for m in threads.load("t1")] == ["c", "a"]
    assert threads.append("t1", [msg("b")]).skipped_ids == ("b",)


def test_a_schema1_archive_is_restored_and_migrated_by_its_next_flush(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1"), msg("m2")])
    whole = threads.hot.snapshot("t1")
    threads.delete("t1")
    threads.hot.clear_tombstone("t1")
    threads.cold.write_bytes("t1", encode_snapshot(whole), None)  # as version 0.1 wrote it
    assert threads.hydrate("t1").status == "restored"
    threads.append("t1", [msg("m3")])

    threads.flush("t1", evict=False)

    assert [p.kind for p in layout_of(threads, "t1").parts] == ["base"]
    assert_archive_is_the_hot_copy(threads, "t1")
    threads.append("t1", [msg("m4")])
    threads.flush("t1", evict=False)
    assert [p.kind for p in layout_of(threads, "t1").parts] == ["base", "segment"]


def test_finished_turns_are_archived_in_segments_and_refused_after_a_restore(
    threads: Threads,
) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg(f"m{i}") for i in range(20)])
    threads.flush("t1", evict=False)
    for turn in range(5):
        owner = f"turn-{turn}"
        threads.acquire_lease("t1", owner, 10_000)
        threads.append("t1", [msg(f"r{turn}")], owner=owner)
        threads.flush("t1", evict=False, release_owner=owner)
    assert_archive_is_the_hot_copy(threads, "t1")

    threads.flush("t1")
    threads.hot.redis.delete(threads.hot.keys("t1").turns)  # only the archive remembers
    threads.hydrate("t1")

    found = threads.cold.read("t1")
    assert found is not None
    assert set(found[0].finished_turns) == {f"turn-{t}" for t in range(5)}
    assert threads.acquire_lease("t1", "turn-2", 10_000).finished


def test_replaced_parts_are_kept_for_the_delay_then_collected(
    hot: HotStore, cold: ColdStore
) -> None:
    delayed = Threads(hot, cold)
    delayed.open("t1", "new")
    delayed.append("t1", [msg(f"m{i}") for i in range(4)])
    delayed.flush("t1", evict=False)
    for i in range(6):
        delayed.append("t1", [msg(f"n{i}")])
        delayed.flush("t1", evict=False)
    layout = layout_of(delayed, "t1")
    stored = {p.name for p in cold.list_parts("t1")}
    referenced = {p.name for p in layout.parts}
    assert layout.garbage  # absorbed segments and old bases wait for the delay
    assert stored == referenced | {g.name for g in layout.garbage}

    prompt = Threads(hot, cold, part_gc_delay_seconds=0)
    prompt.append("t1", [msg("last")])
    prompt.flush("t1", evict=False)

    layout = layout_of(prompt, "t1")
    assert not layout.garbage
    assert {p.name for p in cold.list_parts("t1")} == {p.name for p in layout.parts}


def test_collect_parts_deletes_only_old_orphans(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    threads.flush("t1", evict=False)
    threads.cold.put_part("t1", "seg-1-0123456789abcdef.gz", b"left by a crashed flush")

    assert threads.collect_parts("t1") == 0  # younger than the delay: a flush may own it
    assert threads.collect_parts("t1", older_than_seconds=0) == 1

    assert {p.name for p in threads.cold.list_parts("t1")} == {
        p.name for p in layout_of(threads, "t1").parts
    }
    assert threads.hydrate("t1").status == "hot"


def test_delete_removes_every_part(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    threads.flush("t1", evict=False)
    threads.append("t1", [msg("m2")])
    threads.flush("t1", evict=False)

    assert threads.delete("t1")

    assert threads.cold.list_parts("t1") == []
    assert threads.cold.read("t1") is None


class RacingCold:
    """A cold store whose first ``read_object`` runs ``between`` after reading, the
    way a flush and a collection can land between a hydrate's manifest read and its
    part reads."""

    def __init__(self, inner: ColdStore, between: Any) -> None:
        self.inner, self.between, self.armed = inner, between, True
        self.compression = inner.compression
        self.compression_level = inner.compression_level
        self.max_snapshot_bytes = 2 * 1024**3

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, thread_id: str) -> Any:
        from storage.archive import read_archive

        return read_archive(self, thread_id)  # type: ignore[arg-type]

    def read_object(self, thread_id: str) -> tuple[bytes, str] | None:
        found = self.inner.read_object(thread_id)
        if self.armed:
            self.armed = False
            self.between()
        return found


def test_a_hydrate_whose_parts_were_collected_under_it_reads_the_manifest_again(
    hot: HotStore, cold: ColdStore
) -> None:
    writer = Threads(hot, cold, part_gc_delay_seconds=0)
    writer.open("t1", "new")
    writer.append("t1", [msg(f"m{i}") for i in range(3)])
    writer.flush("t1")  # evicted: base only

    def rewrite_and_collect() -> None:
        writer.hydrate("t1")
        writer.truncate_from("t1", "m2")
        writer.flush("t1")  # a new base; the old one is collected at once

    reader = Threads(hot, RacingCold(cold, rewrite_and_collect))  # type: ignore[arg-type]
    assert reader.hydrate("t1").status == "restored"

    assert [m["id"] for m in reader.load("t1")] == ["m0", "m1"]


def test_a_corrupt_segment_is_refused_and_nothing_is_restored(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    threads.flush("t1", evict=False)
    threads.append("t1", [msg("m2")])
    threads.flush("t1")
    segment = layout_of(threads, "t1").segments[0]
    threads.cold.delete_parts("t1", [segment.name])
    threads.cold.put_part("t1", segment.name, b"\x1f\x8bnot what the manifest says")

    with pytest.raises(SnapshotCorrupt):
        threads.hydrate("t1")

    assert not threads.hot.exists("t1")


def test_a_rewrite_between_two_chunks_is_read_again(hot: HotStore, cold: ColdStore) -> None:
    class RewritingHot(HotStore):
        armed = True

        def read_records(
            self, thread_id: str, source: FlushSource, start: int, **options: Any
        ) -> tuple[list[bytes], list[Any], list[Any]]:
            if self.armed:
                self.armed = False
                HotStore(self.redis).truncate_from(thread_id, "m7")
            return super().read_records(thread_id, source, start, **options)

    threads = Threads(RewritingHot(hot.redis), cold)
    threads.open("t1", "new")
    threads.append("t1", [msg(f"m{i}") for i in range(10)])

    threads.flush("t1", evict=False)

    assert_archive_is_the_hot_copy(threads, "t1")
    assert threads.hot.info("t1").length == 7


def test_an_idle_eviction_sweeps_parts_a_crashed_flush_left(hot: HotStore, cold: ColdStore) -> None:
    threads = Threads(hot, cold, part_gc_delay_seconds=0)
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    threads.flush("t1", evict=False)
    threads.cold.put_part("t1", "seg-1-0123456789abcdef.gz", b"uploaded, manifest never written")
    threads.append("t1", [msg("m2")])

    assert threads.evict_idle("t1", 0) == "evicted"

    found = threads.cold.read("t1")
    assert found is not None
    assert found[0].layout is not None
    assert {p.name for p in threads.cold.list_parts("t1")} == {
        p.name for p in found[0].layout.parts
    }


@pytest.mark.parametrize("archive", ["first", "next"])
def test_a_manifest_put_resent_after_it_landed_keeps_its_archive_whole(
    hot: HotStore, s3_bucket: tuple[Any, str], archive: str
) -> None:
    """boto3 re-sends a PUT whose answer it did not get (a dropped connection, a
    timeout); the conditional PUT that already landed makes the re-sent one fail
    412. That 412 is not a lost race: the manifest there is ours, and the part it
    references must stay (deleting it left an archive that names a missing part)."""
    client, bucket = s3_bucket
    threads = Threads(hot, S3ColdStore(client, bucket, prefix="threads"))
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    if archive == "next":
        threads.flush("t1", evict=False)
        threads.append("t1", [msg("m2")])
    resent: list[str] = []

    def resend_the_manifest_once(request_dict: dict[str, Any], **kw: Any) -> int | None:
        response, url = kw.get("response"), request_dict["url"].partition("?")[0]
        landed = response is not None and response[0].status_code == 200
        if landed and url.endswith(".json.gz") and not resent:
            resent.append(url)
            return 0  # retry at once, as after a lost answer
        return None

    client.meta.events.register_first("needs-retry.s3.PutObject", resend_the_manifest_once)
    try:
        result = threads.flush("t1")
    finally:
        client.meta.events.unregister("needs-retry.s3.PutObject", resend_the_manifest_once)
    assert resent
    assert result.evicted
    threads.hydrate("t1")
    expected = ["m1"] if archive == "first" else ["m1", "m2"]
    assert [m["id"] for m in threads.load("t1")] == expected

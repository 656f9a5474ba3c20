"""Merging a hot copy that diverged from its archive.

A hot copy descends from an archive when it was restored from it, or a flush of it
uploaded it (``HotStore.descends``). After a Redis rollback (an asynchronous
failover, a restore from an older RDB/AOF file) the hot copy is behind its archive
and may have new writes of its own: neither copy may be dropped. ``merge`` keeps
both, by message id: every record of the archive, in its order, then the hot copy's
records the archive never had (the ledger, retired ids included, decides), so
nothing that was ever archived or acknowledged is lost and no id is stored twice.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from storage.snapshot import Snapshot

MERGE_IDS_SHOWN = 100
"""Ids listed per side in a merge record (the counts are always complete)."""


def merge(archive: Snapshot, hot: Snapshot, *, now_ms: int) -> Snapshot:
    """The union of ``archive`` and the diverged ``hot`` copy, as a new version after
    both, carrying a ``last_merge`` record of what each side contributed.

    The state slice is the one written last (by ``updated_ms``); finished turns are
    the union, so no finished turn can run again.
    """
    known = set(archive.ids) | set(archive.retired_ids)
    kept = [(i, r) for i, r in zip(hot.ids, hot.records, strict=True) if i not in known]
    in_hot = set(hot.ids)
    recovered = [i for i in archive.ids if i not in in_hot]
    ids = archive.ids + tuple(i for i, _ in kept)
    retired = (set(archive.retired_ids) | set(hot.retired_ids)) - set(ids)
    version = max(archive.version, hot.version) + 1
    record: dict[str, Any] = {
        "at_ms": now_ms,
        "archive_version": archive.version,
        "hot_version": hot.version,
        "recovered": len(recovered),
        "recovered_ids": recovered[:MERGE_IDS_SHOWN],
        "kept": len(kept),
        "kept_ids": [i for i, _ in kept][:MERGE_IDS_SHOWN],
    }
    return replace(
        archive,
        version=version,
        updated_ms=max(archive.updated_ms, hot.updated_ms, now_ms),
        state=hot.state if hot.updated_ms >= archive.updated_ms else archive.state,
        ids=ids,
        records=archive.records + tuple(r for _, r in kept),
        retired_ids=tuple(sorted(retired)),
        finished_turns=tuple(sorted(set(archive.finished_turns) | set(hot.finished_turns))),
        head=f"{version}.merge.{uuid.uuid4().hex}",
        last_merge=record,
        layout=None,  # not archived yet
    )

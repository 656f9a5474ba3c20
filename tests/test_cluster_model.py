"""bench.cluster_model's instruments against a real redis-server (MONITOR segments, key
positions, the client's share of commandstats), and docs/scaling.md against its JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from bench.cluster_model import (
    KeySpecs,
    Monitor,
    diff,
    model,
    render,
    snapshot,
    top_level_usec,
    touched,
    write_doc,
)
from storage import HotStore
from storage.embedded import EmbeddedRedis
from tests.conftest import msg

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_monitor_tells_script_and_transaction_commands_from_what_the_client_sent(
    redis_server: EmbeddedRedis, hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1")
    hot.append("t1", [msg("warm")])  # the script is loaded (no NOSCRIPT round trip below)
    with Monitor([redis_server.port]) as monitor:
        hot.append("t1", [msg("m1")])
        monitor.mark("append")
        hot.load("t1")
        monitor.mark("load")
        redis_client.zadd("index:{a}", {"t1": 1})
        monitor.mark("zadd")
    segments = monitor.segments()
    specs = KeySpecs(redis_client)

    append = segments["append"]
    assert [c.name for c in append if c.origin == "client"] == ["evalsha"]
    assert any(c.origin == "lua" and c.name == "rpush" for c in append)
    keys, slots, nodes = touched(append, specs)
    assert set(hot.keys("t1").data) <= keys
    assert len(slots) == 1  # one hash tag, one slot
    assert nodes == {redis_server.port}

    load = segments["load"]
    assert [c.name for c in load if c.origin == "client"] == ["multi", "exec"]
    assert {c.name for c in load if c.origin == "exec"} == {"exists", "lrange"}

    zadd = segments["zadd"]
    assert [(c.name, c.origin) for c in zadd] == [("zadd", "client")]
    assert touched(zadd, specs)[0] == {"index:{a}"}


def test_command_usec_counts_a_script_once_not_again_for_its_nested_commands(
    redis_server: EmbeddedRedis, hot: HotStore, redis_client: redis.Redis
) -> None:
    node = redis_server.client(decode_responses=True)
    hot.create("t2")
    hot.append("t2", [msg("warm")])  # the script is loaded
    before = snapshot([node])
    for i in range(20):
        hot.append("t2", [msg(f"m{i}")])
    delta = diff(before, snapshot([node]))
    with Monitor([redis_server.port]) as monitor:
        hot.append("t2", [msg("sampled")])
        monitor.mark("sample")
    sample = monitor.segments()["sample"]
    assert delta.calls["evalsha"] == 20
    assert delta.calls["rpush"] == 20  # Redis counts the script's RPUSH as well
    assert top_level_usec(delta, sample) == pytest.approx(delta.usec["evalsha"])
    assert sum(delta.usec.values()) > delta.usec["evalsha"]
    node.close()


def test_scaling_doc_is_rendered_from_its_json(tmp_path: Path) -> None:
    """docs/scaling.md holds exactly what its JSON renders (no hand-edited numbers)."""
    result = json.loads((DOCS / "cluster_model.json").read_text(encoding="utf-8"))
    assert model(result) == result["model"]
    copy = tmp_path / "scaling.md"
    shutil.copy(DOCS / "scaling.md", copy)
    write_doc(copy, render(result))
    assert copy.read_text(encoding="utf-8") == (DOCS / "scaling.md").read_text(encoding="utf-8")
    ceilings = result["model"]["ceilings_appends_per_s"]
    assert result["model"]["first_bottleneck"] == min(ceilings, key=ceilings.__getitem__)


def test_rendering_refuses_a_doc_without_the_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="cluster_model:operations"):
        write_doc(doc, {"operations": "| table |"})
    assert doc.read_text(encoding="utf-8") == "# no markers\n"

"""The `agent-threads` command: the README's demo end to end, inspect and flush-idle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from click.testing import CliRunner

from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tasks.cli import main
from tests.conftest import msg


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
        "threads.hydrate",
        "demo.scripted_agent",
        "status=archived, evicted=True",
        "nothing was doubled",
        "stopped the celery worker",
        "stopped embedded redis-server",
    ):
        assert expected in out, f"{expected!r} missing from the demo output:\n{out}"
    assert list((tmp_path / ".agent-threads" / "cold").rglob("*.json.gz"))


@pytest.fixture
def store(celery_stack: Celery, redis_client: object) -> Threads:
    return worker_threads()


def test_inspect_shows_a_hot_and_a_cold_thread(store: Threads) -> None:
    store.open("cli-t1", "new", state={"step": 2})
    store.append("cli-t1", [msg("m1", "hello there")])
    runner = CliRunner()
    hot = runner.invoke(main, ["inspect", "cli-t1"])
    assert hot.exit_code == 0, hot.output
    assert "tier hot, version 2" in hot.output
    assert "hello there" in hot.output
    assert '"step": 2' in hot.output
    store.flush("cli-t1")
    cold = runner.invoke(main, ["inspect", "cli-t1"])
    assert "tier cold" in cold.output
    assert "hello there" in cold.output
    missing = runner.invoke(main, ["inspect", "nope"])
    assert missing.exit_code != 0
    assert "exists in no tier" in missing.output
    invalid = runner.invoke(main, ["inspect", "a/b"])
    assert invalid.exit_code != 0
    assert "invalid thread id" in invalid.output


def test_flush_idle_command_evicts_idle_threads(store: Threads) -> None:
    store.open("cli-idle", "new")
    store.hot.mark_active("cli-idle", at_ms=1)
    result = CliRunner().invoke(main, ["flush-idle", "--older-than", "60"])
    assert result.exit_code == 0, result.output
    assert "1 idle, 1 evicted, 0 kept hot, 0 failed" in result.output
    assert not store.hot.exists("cli-idle")


def test_demo_with_anthropic_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["demo", "--model", "anthropic"])
    assert result.exit_code != 0
    assert "ANTHROPIC_API_KEY" in result.output

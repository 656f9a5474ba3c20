"""agent-threads inside a user's own Celery project, and imports without side effects.

The project is written to a temporary directory the way Celery's documentation lays
one out: its own ``celeryconfig.py``, a package with ``celery.py`` (``Celery("myproj")``
plus ``tasks.install(app)``) and ``tasks.py`` (its agent and an ordinary task). A real
``celery -A myproj worker`` subprocess runs our tasks and its agents in one worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from storage.embedded import EmbeddedRedis
from tasks.client import ThreadClient
from tasks.local.processes import WorkerProcess
from tests.conftest import msg

REPO = Path(__file__).resolve().parent.parent

CELERYCONFIG = """
broker_url = "{base}/6"
result_backend = "{base}/7"
task_default_queue = "myproj"
myproj_marker = "the user's own celeryconfig"
agent_threads = {{
    "redis_url": "{base}/8",
    "cold_url": "file://{cold}",
    "queue": "myproj-threads",
    "max_retries": 2,
}}
"""

CELERY_PY = """
from celery import Celery

import tasks as agent_threads

app = Celery("myproj")
app.config_from_object("celeryconfig")
agent_threads.install(app)
app.autodiscover_tasks(["myproj"])
"""

TASKS_PY = """
from celery import shared_task

from tasks.base import ThreadTask


@shared_task(name="myproj.agent", base=ThreadTask, bind=True)
def agent(self, thread_id, turn_id):
    seen = len(self.threads.load(thread_id))
    text = f"{self.app.conf.myproj_marker}, {self.retry_limit} retries, {seen} seen"
    reply = {"role": "assistant", "content": text}
    self.threads.append(thread_id, [{"id": f"{turn_id}:reply", "body": reply}], owner=turn_id)
    return text


@shared_task(name="myproj.add")
def add(a, b):
    return a + b
"""


def write_project(root: Path, base: str) -> None:
    (root / "myproj").mkdir()
    (root / "celeryconfig.py").write_text(CELERYCONFIG.format(base=base, cold=root / "cold"))
    (root / "myproj" / "__init__.py").write_text("from myproj.celery import app\n")
    (root / "myproj" / "celery.py").write_text(textwrap.dedent(CELERY_PY))
    (root / "myproj" / "tasks.py").write_text(textwrap.dedent(TASKS_PY))


@pytest.fixture
def project(tmp_path: Path, redis_server: EmbeddedRedis) -> Iterator[Celery]:
    base = f"redis://127.0.0.1:{redis_server.port}"
    write_project(tmp_path, base)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENT_THREADS_")}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{REPO}"
    worker = WorkerProcess(
        env,
        ["myproj-threads", "myproj"],
        name=f"myproj-{uuid.uuid4().hex[:6]}",
        cwd=str(tmp_path),
        log_path=str(tmp_path / "worker.log"),
        celery_app="myproj",
    )
    producer = Celery("myproj-producer", set_as_current=False)
    producer.conf.update(
        broker_url=f"{base}/6",
        result_backend=f"{base}/7",
        task_default_queue="myproj",
        agent_threads={"redis_url": f"{base}/8", "queue": "myproj-threads"},
    )
    from tasks import install

    install(producer, beat=False)
    worker.start()
    try:
        worker.wait_ready(producer)
        yield producer
    finally:
        worker.stop()
        print((tmp_path / "worker.log").read_text()[-3000:])


def test_a_users_own_celery_app_runs_our_tasks_and_its_agents_in_one_worker(
    project: Celery,
) -> None:
    registered = project.control.inspect(timeout=5).registered() or {}
    names = {name for tasks in registered.values() for name in tasks}
    assert {"threads.append", "threads.open_turn", "threads.flush", "myproj.agent"} <= names
    assert project.send_task("myproj.add", args=(2, 3)).get(timeout=30) == 5

    client = ThreadClient(project)
    thread_id = f"user@example.com/chat {uuid.uuid4().hex[:6]} é"
    agent = project.signature("myproj.agent")
    flushed = client.run_turn(thread_id, [msg("u1", "hello")], agent, turn_id="t1", mode="new")
    assert flushed["status"] == "archived"
    loaded = client.call("load", thread_id=thread_id)["messages"]
    assert [m["id"] for m in loaded] == ["u1", "t1:reply"]
    assert loaded[1]["body"]["content"] == "the user's own celeryconfig, 2 retries, 1 seen"
    status = client.turn_status(thread_id, "t1")
    assert status is not None
    assert status.state == "finished"


SIDE_EFFECTS = """
import json, logging, sys
root = logging.getLogger()
handler = logging.StreamHandler(sys.stderr)
root.addHandler(handler)
formatter, filters = handler.formatter, list(handler.filters)
from celery import signals
before = {name: len(getattr(signals, name).receivers) for name in signals.__all__}
import tasks, tasks.threads, tasks.turns, tasks.client, tasks.integration, tasks.steps
import tasks.observability.logs, tasks.observability.metrics, tasks.models.anthropic
import adapters.anthropic, adapters.langchain, adapters.models, storage.tiered
after = {name: len(getattr(signals, name).receivers) for name in signals.__all__}
print(json.dumps({
    "signals": {k: after[k] - before[k] for k in after if after[k] != before[k]},
    "formatter": handler.formatter is formatter and handler.filters == filters,
    "levels": logging.getLogger("celery").level,
    "celeryconfig": "celeryconfig" in sys.modules,
}))
"""


def test_importing_any_module_connects_nothing_and_touches_no_logger(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_THREADS_")}
    out = subprocess.run(
        [sys.executable, "-c", SIDE_EFFECTS],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout)
    assert seen == {"signals": {}, "formatter": True, "levels": 0, "celeryconfig": False}


def test_no_top_level_celeryconfig_is_installed_and_a_users_own_wins(tmp_path: Path) -> None:
    """The distribution ships packages only; a project's ``celeryconfig`` is its own."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert "py-modules" not in setuptools
    assert setuptools["packages"]["find"]["include"] == ["storage*", "tasks*", "adapters*"]
    (tmp_path / "celeryconfig.py").write_text("mine = True\n")
    code = "import celeryconfig as c, tasks.app; print(c.__file__, hasattr(c, 'mine'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [str(tmp_path / "celeryconfig.py"), "True"]

"""The chaos soak's machinery (``tests/test_chaos_soak.py``): its servers, a fleet of
real ``celery worker`` processes with a killer, the workload, and the exact checks.

Workload and invariants (everything is keyed by message id, so each check is exact):

* 50 threads: 30 *append threads* (``a00``..``a29``) written only by ``threads.append``
  tasks without a lease, and 20 *turn threads* (``t00``..``t19``) written only by
  ``agent_turn`` canvases, one turn at a time. No thread gets both kinds of writes, so
  a turn's history (and therefore the scripted model's answer) is determined.
* Sequence producers: producer ``p`` on append thread ``X`` sends batches of
  ``X.s<p>.<n>`` ids with consecutive ``n`` and *waits for each batch's result before
  sending the next* (re-sending it if no result came: ``ThreadClient.deliver``). Some
  batches are sent twice at once, some are sent again after their result came
  (``appended_ids`` must then be empty), some repeat the last acknowledged id in front
  of new ones. Order invariant: the records of the thread whose ids start with
  ``X.s<p>.`` are exactly ``X.s<p>.00000``, ``X.s<p>.00001``, ... in this order (no
  loss, no doubling, no reordering).
* Burst producers: windows of many batches (``X.b<w>.<k>.<j>``) to random append
  threads, all in flight at once, a tenth of them sent twice, collected with timeouts
  and re-sent when no result came in time. No order between batches is promised.
* Every batch's new ids (not sent before by its producer) are one Lua call: they must
  be stored contiguously and in batch order, whatever the kind of producer.
* Turn drivers: turn ``n`` of turn thread ``T`` (``T.turn<n>``) appends 1-2 user
  messages and runs ``test.tool_turn`` (an agent loop) with 1-3 tool calls; a tenth
  of the turns are sent twice at once. Turns are fire-and-forget (``ThreadClient.turn``)
  and the driver waits on the turn record before starting the next, never re-sending:
  the turn reconciler (a beat apart from the killed workers) recovers them. The exact
  expected content of a turn thread is known: per turn its user messages, then for
  each tool call ``<turn>:<k>:assistant`` (the call ``<turn>-c<k>``) and
  ``<turn>:tool:<turn>-c<k>`` (its result), then ``<turn>:<calls>:assistant``.
* Each tool call runs once, unless a kill hit it between its start and its stored
  result (the soak matches every second execution to a kill; any other is an error).
* No turn ever waits for a lease (``threads.open_turn`` is never retried): the
  turns of a thread run one after another, so the only possible holder would be a
  late duplicate of a finished turn, which must find that turn finished instead.
* Every stored body equals the body that was sent (or that the turn task derives).
* After the soak, every thread is flushed and evicted through ``threads.flush`` and
  hydrated and loaded through ``threads.hydrate`` / ``threads.load`` /
  ``threads.load_state``: records, state and version must equal what was there before.

The soak workers run without the optional model SDKs (anthropic, google-genai,
langchain): a worker restarted every few seconds would otherwise spend about 3 s of
CPU per start importing them, on a 2-core CI machine most of the soak's CPU.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult
from celery.signals import task_prerun

from adapters.base import reply_id, tool_result_id
from adapters.scripted import ScriptedAdapter
from storage.embedded import EmbeddedRedis
from storage.records import Message
from storage.tiered import Threads
from tasks.app import settings
from tasks.client import ThreadClient
from tasks.local.processes import BeatProcess, WorkerProcess, client_app
from tasks.stores import build_threads
from tests.rabbitmq import DELAY_LEVELS, message_counts
from tests.servers import s3_client_for

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "soak"
QUEUES = ["soak-threads", "soak-default"]
HOT_DB, BROKER_DB, RESULTS_DB = 0, 1, 2
APPEND_THREADS = [f"a{i:02d}" for i in range(30)]
TURN_THREADS = [f"t{i:02d}" for i in range(20)]
RESULT_TIMEOUT = 120.0
"""A producer gives up on one piece of work after this long (an error of the soak)."""
APPEND_RESEND_AFTER = 12.0
TURN_RESEND_AFTER = 20.0
BURST_WINDOW = 16
"""Batches a burst producer has in flight at once (a tenth of them twice)."""


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakSettings:
    """``AGENT_THREADS_SOAK_SECONDS``: how long the producers run while workers are
    killed (default 40); ``AGENT_THREADS_SOAK_SCALE``: multiplies every producer's cap
    on the work it sends (default 1); ``AGENT_THREADS_SOAK_SEED``;
    ``AGENT_THREADS_SOAK_COLD``: ``s3`` (default: S3ColdStore on a moto server, the
    production path with its conditional writes, for about a quarter more run time
    than files; moto checks a condition and then writes without a lock, so two
    writes racing within a fraction of a millisecond could both win, which the
    tiered flush tolerates) or ``file`` (FileColdStore, atomic under flock);
    ``AGENT_THREADS_SOAK_LOGLEVEL``: the workers' log level (default WARNING)."""

    seconds: float = 40.0
    scale: float = 1.0
    seed: int = 20261126
    cold: str = "s3"
    loglevel: str = "WARNING"

    @classmethod
    def from_env(cls) -> SoakSettings:
        env = os.environ.get
        cold = env("AGENT_THREADS_SOAK_COLD", cls.cold)
        if cold not in ("file", "s3"):
            raise ValueError(f"AGENT_THREADS_SOAK_COLD={cold!r}: use 'file' or 's3'")
        return cls(
            seconds=float(env("AGENT_THREADS_SOAK_SECONDS", str(cls.seconds))),
            scale=float(env("AGENT_THREADS_SOAK_SCALE", str(cls.scale))),
            seed=int(env("AGENT_THREADS_SOAK_SEED", str(cls.seed))),
            cold=cold,
            loglevel=env("AGENT_THREADS_SOAK_LOGLEVEL", cls.loglevel),
        )

    def cap(self, base: int) -> int:
        return max(1, round(base * self.scale))


# -- worker side: count executions and redeliveries --------------------------------------

RUNS_KEY, REDELIVERED_KEY, RETRIES_KEY = "soak:runs", "soak:redelivered", "soak:retries"
_counter_client: list[redis.Redis] = []


@task_prerun.connect
def _count_execution(task: Any = None, **_: Any) -> None:
    """In soak workers only (their namespace): count each task execution, how many
    were broker redeliveries (a message restored after a worker died or after the
    visibility timeout) and how many were Celery retries, by task name."""
    if task is None or settings()["namespace"] != NAMESPACE:
        return
    if not _counter_client:
        _counter_client.append(redis.Redis.from_url(settings()["redis_url"]))
    request = task.request
    pipe = _counter_client[0].pipeline(transaction=False)
    pipe.hincrby(RUNS_KEY, task.name, 1)
    if (request.delivery_info or {}).get("redelivered"):
        pipe.hincrby(REDELIVERED_KEY, task.name, 1)
    if request.retries:
        pipe.hincrby(RETRIES_KEY, task.name, 1)
    pipe.execute()


# -- workers and the killer --------------------------------------------------------------


class WorkerFleet:
    """``count`` real workers; a killer thread SIGKILLs a random *ready* one every
    0.5-2 s (only while another one is ready too, so at least one always serves)
    and starts it again at once."""

    def __init__(
        self, env: dict[str, str], app: Celery, log_dir: Path, *, loglevel: str, count: int = 3
    ) -> None:
        self.app = app
        self.workers = [
            WorkerProcess(
                env,
                QUEUES,
                name=f"soak{i}",
                log_path=str(log_dir / f"worker{i}.log"),
                cwd=str(REPO),
                loglevel=loglevel,
            )
            for i in range(count)
        ]
        self.log_dir = log_dir
        self.ready = [False] * count
        self.started_at = [0.0] * count
        self.startup_s: list[float] = []
        """Seconds from each restart until the worker answered a ping (at most)."""
        self.kills = 0
        self.kill_times: list[float] = []
        """When each kill happened (``time.time()``)."""
        self.restarts = 0
        self.unexpected_exits = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._killer: threading.Thread | None = None

    def hostname(self, index: int) -> str:
        return self.workers[index].name.replace("%h", socket.gethostname())

    def start_all(self, timeout: float = 60.0) -> None:
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.wait_ready(self.app, timeout=timeout)
        self.ready = [True] * len(self.workers)

    def refresh_ready(self) -> None:
        """Ask the workers not known to be ready for a ping (one broadcast)."""
        for i, worker in enumerate(self.workers):
            if worker.process is None or worker.process.poll() is not None:
                self.unexpected_exits += 1  # it died by itself: start it again
                self.ready[i] = False
                worker.start()
                self.started_at[i] = time.monotonic()
                self.restarts += 1
        pending = [i for i, up in enumerate(self.ready) if not up]
        if not pending:
            return
        replies = self.app.control.ping(
            destination=[self.hostname(i) for i in pending], timeout=0.5
        )
        answered = {name for reply in replies for name in reply}
        for i in pending:
            if self.hostname(i) in answered:
                self.ready[i] = True
                self.startup_s.append(time.monotonic() - self.started_at[i])

    def start_killing(self, seed: int) -> None:
        rng = random.Random(seed)

        def killer() -> None:
            try:
                while not self._stop.wait(rng.uniform(0.5, 2.0)):
                    self.refresh_ready()
                    up = [i for i, ready in enumerate(self.ready) if ready]
                    if len(up) < 2:
                        continue  # never kill the last ready worker
                    victim = rng.choice(up)
                    self.ready[victim] = False
                    self.workers[victim].kill()
                    self.kill_times.append(time.time())
                    self.kills += 1
                    self.workers[victim].start()
                    self.started_at[victim] = time.monotonic()
                    self.restarts += 1
            except Exception as exc:  # the test reports it: a soak that stopped killing
                self.errors.append(f"killer: {exc!r}")

        self._killer = threading.Thread(target=killer, name="soak-killer", daemon=True)
        self._killer.start()

    def stop_killing(self) -> None:
        self._stop.set()
        if self._killer is not None:
            self._killer.join(timeout=30)

    def revive(self, timeout: float = 60.0) -> None:
        """Every worker running and answering (after the killer stopped)."""
        for i, worker in enumerate(self.workers):
            if worker.process is None or worker.process.poll() is not None:
                worker.start()
                self.restarts += 1
            worker.wait_ready(self.app, timeout=timeout)
            self.ready[i] = True

    def close(self) -> None:
        self.stop_killing()
        for worker in self.workers:
            worker.kill()


# -- the stack: servers, app, workers, storage --------------------------------------------

_SDK_BLOCKER = """\
# Written by tests/soak.py for the soak's worker processes only: leave out the optional
# model SDKs, whose imports cost ~3 s of CPU per worker start (the soak restarts one
# every second or so). Their tasks simply do not register, as without the extras.
import sys
for _name in ("anthropic", "google.genai", "langchain_core"):
    sys.modules[_name] = None
"""


def without_model_sdks(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` for a worker process that starts without the optional model SDKs: a
    ``sitecustomize`` in ``folder`` goes first on its ``PYTHONPATH``. For tests that
    restart workers often (the soak, the crash tests); their tasks need no SDK."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SDK_BLOCKER)
    path = (str(folder), str(REPO), env.get("PYTHONPATH", ""))
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


class SoakStack:
    """Its own redis-server (hot tier, broker and results in dbs 0, 1, 2), a cold
    store, an app for the producers, three workers, and storage to inspect.
    ``broker_url`` (a RabbitMQ vhost) replaces the Redis broker of db 1."""

    def __init__(
        self, settings: SoakSettings, tmp_path: Path, broker_url: str | None = None
    ) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.broker_url = broker_url
        self.server = EmbeddedRedis(data_dir=tmp_path / "redis")
        self.s3: Any = None
        self.fleet: WorkerFleet | None = None
        self.beat: BeatProcess | None = None
        self.app: Celery | None = None
        self.threads: Threads | None = None
        self._clients: list[redis.Redis] = []

    def start(self) -> SoakStack:
        self.server.start()
        base = f"redis://127.0.0.1:{self.server.port}"
        if self.settings.cold == "s3":
            from tests.servers import MotoServer

            self.s3 = MotoServer().start()
            bucket = "soak"
            s3_client_for(self.s3.url).create_bucket(Bucket=bucket)
            cold = {"cold_url": f"s3://{bucket}/threads", "s3_endpoint_url": self.s3.url}
        else:
            cold = {"cold_url": f"file://{self.tmp_path / 'cold'}", "s3_endpoint_url": ""}
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "test",  # moto's dummy credentials
            "AWS_SECRET_ACCESS_KEY": "test",
            "AGENT_THREADS_COLD_URL": cold["cold_url"],
            "AGENT_THREADS_S3_ENDPOINT_URL": cold["s3_endpoint_url"],
            "AGENT_THREADS_BROKER_URL": self.broker_url or f"{base}/{BROKER_DB}",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/{RESULTS_DB}",
            "AGENT_THREADS_REDIS_URL": f"{base}/{HOT_DB}",
            "AGENT_THREADS_NAMESPACE": NAMESPACE,
            "AGENT_THREADS_QUEUE": QUEUES[0],
            "AGENT_THREADS_DEFAULT_QUEUE": QUEUES[1],
            "AGENT_THREADS_IMPORTS": "tests.agent_tasks,tests.soak",
        }
        # the turn timers scaled down 10x from the defaults, in their proportions (lease,
        # heartbeat and reconciler every quarter lease); the beat runs apart and is never
        # killed; test_durable_turns.py kills workers at the defaults themselves
        env.update(
            {
                "AGENT_THREADS_LEASE_TTL_MS": "2000",
                "AGENT_THREADS_HEARTBEAT_MS": "500",
                "AGENT_THREADS_TURN_RECONCILE_EVERY": "0.5",
                "AGENT_THREADS_REDIS_SOCKET_TIMEOUT": "0.5",  # 5 s at the defaults
                "AGENT_THREADS_RETRY_BACKOFF_MAX": "2",  # under the visibility timeout
            }
        )
        if self.broker_url is None:  # the Redis broker's redelivery of dead workers' tasks
            env["AGENT_THREADS_VISIBILITY_TIMEOUT"] = "3"
            env["AGENT_THREADS_RESTORE_INTERVAL"] = "1"
        env = without_model_sdks(env, self.tmp_path / "worker-site")
        self.app = client_app("soak-client", env, QUEUES)
        self.hot_client = self._client(HOT_DB)
        self.broker_client = self._client(BROKER_DB)
        # the storage the workers build, from the same settings (key layout included)
        self.threads = build_threads(
            {
                **settings(),
                **cold,
                "s3_endpoint_url": cold["s3_endpoint_url"] or None,
                "redis_url": f"{base}/{HOT_DB}",
                "namespace": NAMESPACE,
            }
        )
        log_dir = self.tmp_path / "logs"
        log_dir.mkdir(exist_ok=True)
        self.fleet = WorkerFleet(env, self.app, log_dir, loglevel=self.settings.loglevel)
        schedule = str(self.tmp_path / "beat-schedule")
        self.beat = BeatProcess(env, schedule, log_path=str(log_dir / "beat.log"), cwd=str(REPO))
        self.beat.start()
        self.fleet.start_all()
        return self

    def _client(self, db: int) -> redis.Redis:
        client = self.server.client(db=db)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stop everything this stack started, in reverse order, whatever failed."""
        try:
            if self.beat is not None:
                self.beat.stop()
            if self.fleet is not None:
                self.fleet.close()
        finally:
            try:
                # AsyncResults unsubscribe from the result backend when collected:
                # let that happen while the server is still up
                gc.collect()
                if self.app is not None:
                    self.app.close()
                for client in self._clients:
                    client.close()
                if self.threads is not None:
                    self.threads.hot.redis.close()
            finally:
                try:
                    if self.s3 is not None:
                        self.s3.stop()
                finally:
                    self.server.stop()


@contextmanager
def soak_stack(
    settings: SoakSettings, tmp_path: Path, broker_url: str | None = None
) -> Iterator[SoakStack]:
    stack = SoakStack(settings, tmp_path, broker_url)
    try:
        yield stack.start()
    finally:
        stack.close()


# -- what the producers sent ------------------------------------------------------------


def user_body(message_id: str) -> dict[str, Any]:
    return {"role": "user", "content": f"text of {message_id} ✓"}


def records_of(ids: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": i, "body": user_body(i)} for i in ids]


@dataclass
class TurnPlan:
    turn_id: str
    user_ids: list[str]
    tool_calls: int

    def call_id(self, k: int) -> str:
        return f"{self.turn_id}-c{k}"

    def expected_ids(self) -> list[str]:
        steps = [
            step
            for k in range(self.tool_calls)
            for step in (reply_id(self.turn_id, k), tool_result_id(self.turn_id, self.call_id(k)))
        ]
        return [*self.user_ids, *steps, reply_id(self.turn_id, self.tool_calls)]


@dataclass
class Ledger:
    """What was acknowledged, for the checks; counters for the figures."""

    sequences: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    """(append thread, producer) -> the ids it sent, in order (all acknowledged)."""
    batches: dict[str, list[list[str]]] = field(default_factory=dict)
    """thread -> the new ids of each acknowledged batch (one Lua call each)."""
    turns: dict[str, list[TurnPlan]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    waits: list[tuple[float, str]] = field(default_factory=list)
    """(seconds, what) of every piece of work a producer waited for."""
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def batch(self, thread_id: str, fresh: list[str]) -> None:
        with self.lock:
            self.batches.setdefault(thread_id, []).append(fresh)

    def waited(self, since: float, what: str) -> None:
        with self.lock:
            self.waits.append((time.monotonic() - since, what))

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


# -- producers -----------------------------------------------------------------------------


class Workload:
    """The producers of one soak; ``run()`` returns when all of them finished."""

    def __init__(self, stack: SoakStack, settings: SoakSettings) -> None:
        assert stack.app is not None
        assert stack.threads is not None
        self.app = stack.app
        self.threads = stack.threads
        self.settings = settings
        self.ledger = Ledger()
        self.clients: list[ThreadClient] = []
        self.deadline = 0.0

    def client(self, resend_after: float) -> ThreadClient:
        client = ThreadClient(self.app, timeout=RESULT_TIMEOUT, resend_after=resend_after)
        with self.ledger.lock:
            self.clients.append(client)
        return client

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    def append(self, thread_id: str, batch: list[str]) -> AsyncResult[Any]:
        self.ledger.count("append_tasks_sent")
        return self.app.signature(
            "threads.append", kwargs={"thread_id": thread_id, "messages": records_of(batch)}
        ).apply_async()

    def run(self) -> None:
        s = self.settings
        self.deadline = time.monotonic() + s.seconds
        jobs: list[tuple[str, Callable[[], None]]] = []
        # threads a00..a09 get two sequence producers each, a10..a19 one; all get bursts
        for p in range(30):
            tid = APPEND_THREADS[p % 20]
            jobs.append((f"seq-{tid}-{p}", lambda t=tid, p=p: self.sequence(t, p, s.cap(60))))
        for w in range(3):
            jobs.append((f"burst-{w}", lambda w=w: self.bursts(w, s.cap(400))))
        for tid in TURN_THREADS:
            jobs.append((f"turns-{tid}", lambda t=tid: self.turns(t, s.cap(20))))
        # append threads exist before their producers start (created with an owner,
        # so a re-sent create finds its own thread)
        creator = self.client(APPEND_RESEND_AFTER)
        for tid in APPEND_THREADS:
            state = {"kind": "append", "thread": tid}
            creator.call("create", thread_id=tid, state=state, owner=f"create-{tid}")
            self.ledger.states[tid] = state
        run_all(jobs, self.ledger)

    def sequence(self, thread_id: str, p: int, cap: int) -> None:
        """Batches of consecutive ids, each waited for before the next is sent."""
        rng = random.Random(f"{self.settings.seed}:seq:{thread_id}:{p}")
        client = self.client(APPEND_RESEND_AFTER)
        sent: list[str] = []
        self.ledger.sequences[(thread_id, p)] = sent
        for _ in range(cap):
            if not self.time_left():
                return
            n = len(sent)
            fresh = [f"{thread_id}.s{p}.{n + j:05d}" for j in range(rng.randint(1, 4))]
            roll = rng.random()
            batch = [sent[-1], *fresh] if roll < 0.1 and sent else fresh
            if 0.1 <= roll < 0.2:  # a deliberate duplicate, in flight with the original
                self.ledger.count("duplicates_sent")
                self.append(thread_id, batch)
            where = f"thread {thread_id} producer s{p} batch {batch}"
            since = time.monotonic()
            try:
                result = client.deliver(lambda b=batch: self.append(thread_id, b))
            except Exception as exc:  # the batch is in doubt: this producer stops
                self.ledger.error(f"{where}: {exc!r} after {time.monotonic() - since:.0f} s")
                return
            self.ledger.waited(since, where)
            if roll < 0.1 and sent and sent[-1] not in result["skipped_ids"]:
                self.ledger.error(f"{where}: the repeated id {sent[-1]} was not skipped: {result}")
            self.ledger.batch(thread_id, fresh)
            sent.extend(fresh)
            if 0.2 <= roll < 0.3:  # sent again after its result came: nothing to append
                self.ledger.count("duplicates_sent")
                again = client.deliver(lambda b=batch: self.append(thread_id, b))
                if again["appended_ids"]:
                    self.ledger.error(f"{where}: a repeat appended {again['appended_ids']}")

    def bursts(self, w: int, cap: int) -> None:
        """Windows of batches to random append threads, all in flight at once."""
        rng = random.Random(f"{self.settings.seed}:burst:{w}")
        client = self.client(APPEND_RESEND_AFTER)
        k = 0
        while k < cap and self.time_left():
            window: list[Pending] = []
            for _ in range(min(BURST_WINDOW, cap - k)):
                tid = rng.choice(APPEND_THREADS)
                batch = [f"{tid}.b{w}.{k:05d}.{j}" for j in range(rng.randint(1, 5))]
                k += 1
                item = Pending(tid, batch, [self.append(tid, batch)])
                if rng.random() < 0.1:
                    self.ledger.count("duplicates_sent")
                    item.results.append(self.append(tid, batch))
                window.append(item)
            for item in collect(window, lambda i: self.append(i.thread_id, i.batch), client):
                with self.ledger.lock:
                    self.ledger.waits.append(
                        (item.seconds, f"thread {item.thread_id} burst batch {item.batch}")
                    )
                if item.error:
                    self.ledger.error(
                        f"thread {item.thread_id} burst batch {item.batch}: {item.error}"
                    )
                else:
                    self.ledger.batch(item.thread_id, item.batch)

    def turns(self, thread_id: str, cap: int) -> None:
        """Turns one after another (a user waits for the reply before writing again)."""
        rng = random.Random(f"{self.settings.seed}:turns:{thread_id}")
        client = self.client(TURN_RESEND_AFTER)
        plans: list[TurnPlan] = []
        self.ledger.turns[thread_id] = plans
        for n in range(cap):
            if not self.time_left():
                break
            turn_id = f"{thread_id}.turn{n:04d}"
            plan = TurnPlan(
                turn_id,
                [f"{turn_id}.u{j}" for j in range(rng.randint(1, 2))],
                rng.randint(1, 3),
            )
            think = rng.choice([0, 10, 50])
            run = self.app.signature(
                "test.tool_turn",
                kwargs={"tool_calls": plan.tool_calls, "think_ms": think, "tool_ms": think},
            )
            mode = "new" if n == 0 else "continue"

            def send(plan: TurnPlan = plan, run: Any = run, mode: Any = mode) -> AsyncResult[Any]:
                self.ledger.count("turns_sent")
                return client.turn(
                    thread_id, records_of(plan.user_ids), run, turn_id=plan.turn_id, mode=mode
                )

            since = time.monotonic()
            try:
                send()
                if rng.random() < 0.1:  # the same turn again at once: it must do nothing
                    self.ledger.count("duplicates_sent")
                    send()
                status = client.wait_turn(thread_id, turn_id, timeout=RESULT_TIMEOUT)
            except Exception as exc:
                self.ledger.error(
                    f"thread {thread_id} turn {turn_id}: {exc!r} after "
                    f"{time.monotonic() - since:.0f} s; {self.describe(thread_id)}"
                )
                return
            if status.state != "finished":
                self.ledger.error(f"thread {thread_id} turn {turn_id} ended {status}")
                return
            self.ledger.waited(since, f"thread {thread_id} turn {turn_id}")
            plans.append(plan)
        state = {"kind": "turns", "turns": len(plans)}
        client.call("save_state", thread_id=thread_id, state=state)
        self.ledger.states[thread_id] = state

    def describe(self, thread_id: str) -> str:
        """The thread's hot state, for a failure message."""
        try:
            info = self.threads.hot.info(thread_id)
        except Exception as exc:
            return f"hot info: {exc!r}"
        return (
            f"hot: {info.length} records, version {info.version}, "
            f"lease {info.lease_owner} ({info.lease_ttl_ms} ms left)"
        )

    def resends(self) -> int:
        return sum(c.resends for c in self.clients)


@dataclass
class Pending:
    """One piece of work in flight: every copy sent so far, and how it ended."""

    thread_id: str
    batch: list[str]
    results: list[AsyncResult[Any]]
    value: Any = None
    error: str | None = None
    sent_at: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    """From the first send until a result (or the error) came."""


def collect(
    window: list[Pending], resend: Callable[[Pending], AsyncResult[Any]], client: ThreadClient
) -> list[Pending]:
    """Wait for every item of the window (any of its copies); re-send an item whose
    copies all gave no result within ``client.resend_after``; give up after
    ``client.timeout``."""
    give_up = time.monotonic() + client.timeout
    waiting = list(window)
    while waiting:
        round_end = time.monotonic() + client.resend_after
        late: list[Pending] = []
        for item in waiting:
            try:
                done = next((r for r in item.results if r.ready()), None)
                remaining = round_end - time.monotonic()
                if done is None and remaining <= 0:
                    late.append(item)
                    continue
                if done is None:  # wait for the newest copy until the round ends
                    item.value = item.results[-1].get(timeout=remaining)
                else:
                    item.value = done.get(timeout=5)
            except ResultTimeout:
                late.append(item)
                continue
            except Exception as exc:
                item.error = repr(exc)
            item.seconds = time.monotonic() - item.sent_at
        if late and time.monotonic() > give_up:
            for item in late:
                item.error = f"no result within {client.timeout} s"
            break
        for item in late:
            client.resends += 1
            item.results.append(resend(item))
        waiting = late
    return window


def run_all(jobs: list[tuple[str, Callable[[], None]]], ledger: Ledger) -> None:
    def wrapped(name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except Exception as exc:
            ledger.error(f"producer {name}: {exc!r}")

    workers = [threading.Thread(target=wrapped, args=job, name=job[0], daemon=True) for job in jobs]
    for worker in workers:
        worker.start()
    give_up = time.monotonic() + RESULT_TIMEOUT * 3
    for worker in workers:
        worker.join(timeout=max(0.1, give_up - time.monotonic()))
    stuck = [w.name for w in workers if w.is_alive()]
    if stuck:
        ledger.error(f"producers still running after {RESULT_TIMEOUT * 3} s: {stuck}")


# -- after the soak ---------------------------------------------------------------------------


def wait_until_quiet(stack: SoakStack, timeout: float = 90.0) -> float:
    """Wait until no task is queued, unacknowledged or running (late duplicates and
    redeliveries included), three polls in a row; returns the seconds it took."""
    assert stack.app is not None
    started = time.monotonic()
    broker = stack.broker_client
    workers = stack.fleet.workers if stack.fleet is not None else []
    quiet = 0
    while time.monotonic() - started < timeout:
        if stack.broker_url is None:
            queued = sum(
                broker.llen(key)
                for key in broker.scan_iter(match="soak-*")
                if broker.type(key) == b"list"
            )
            busy = queued + broker.hlen("unacked")
        else:  # RabbitMQ: ready in our queues or waiting in a delay level
            busy = sum(message_counts(stack.broker_url, [*QUEUES, *DELAY_LEVELS]).values())
        if busy == 0:
            inspect = stack.app.control.inspect(timeout=1.0, limit=len(workers))
            running = [t for tasks in (inspect.active() or {}).values() for t in tasks]
            running += [t for tasks in (inspect.scheduled() or {}).values() for t in tasks]
            if stack.broker_url is not None:  # prefetched, not yet started (unacked)
                running += [t for tasks in (inspect.reserved() or {}).values() for t in tasks]
            busy = len(running)
        quiet = quiet + 1 if busy == 0 else 0
        if quiet >= 3:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"tasks still queued or running {timeout} s after the soak ended")


@dataclass
class Content:
    records: list[Message]
    state: dict[str, Any]
    version: int


def read_content(threads: Threads, thread_id: str) -> Content:
    records = threads.load(thread_id)
    state = threads.load_state(thread_id)
    return Content(records, state, threads.hot.version(thread_id))


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """The first index where two sequences differ (the shorter length if one is a
    prefix of the other)."""
    return next(
        (n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def check_append_thread(ledger: Ledger, thread_id: str, content: Content) -> list[str]:
    problems: list[str] = []
    ids = [str(r["id"]) for r in content.records]
    positions = {i: n for n, i in enumerate(ids)}
    for message_id, times in Counter(ids).items():
        if times > 1:
            problems.append(f"thread {thread_id}: message {message_id} stored {times} times")
    expected = {i for batch in ledger.batches.get(thread_id, []) for i in batch}
    for message_id in sorted(expected - positions.keys()):
        problems.append(f"thread {thread_id}: message {message_id} was acknowledged but is lost")
    for message_id in sorted(positions.keys() - expected):
        problems.append(f"thread {thread_id}: message {message_id} was never acknowledged")
    for (tid, p), sent in sorted(ledger.sequences.items()):
        if tid != thread_id:
            continue
        stored = [i for i in ids if i.startswith(f"{tid}.s{p}.")]
        if stored != sent:
            at = first_difference(stored, sent)
            problems.append(
                f"thread {thread_id}: producer s{p}'s messages differ from what it sent at "
                f"#{at}: stored {stored[at : at + 3]}, sent {sent[at : at + 3]} "
                f"({len(stored)} stored, {len(sent)} sent)"
            )
    for batch in ledger.batches.get(thread_id, []):
        at = [positions.get(i) for i in batch]
        if None not in at and at != list(range(at[0], at[0] + len(batch))):  # type: ignore[operator]
            problems.append(
                f"thread {thread_id}: batch {batch} not stored as one run: positions {at}"
            )
    for record in content.records:
        if record["body"] != user_body(str(record["id"])):
            problems.append(f"thread {thread_id}: body of {record['id']} changed: {record['body']}")
    if content.state != ledger.states.get(thread_id):
        problems.append(
            f"thread {thread_id}: state {content.state} != {ledger.states.get(thread_id)}"
        )
    return problems


def check_turn_thread(
    ledger: Ledger, thread_id: str, content: Content, lease: str | None, adapter: ScriptedAdapter
) -> list[str]:
    problems: list[str] = []
    plans = ledger.turns.get(thread_id, [])
    ids = [str(r["id"]) for r in content.records]
    expected = [i for plan in plans for i in plan.expected_ids()]
    if ids != expected:
        at = first_difference(ids, expected)
        problems.append(
            f"thread {thread_id}: records differ from the turns sent at #{at}: "
            f"stored {ids[at : at + 4]}, expected {expected[at : at + 4]} "
            f"({len(ids)} stored, {len(expected)} expected)"
        )
        return problems
    by_id = {str(r["id"]): r["body"] for r in content.records}
    for plan in plans:
        for user in plan.user_ids:
            if by_id[user] != user_body(user):
                problems.append(f"thread {thread_id}: body of {user} changed: {by_id[user]}")
        for k in range(plan.tool_calls):
            call = by_id[reply_id(plan.turn_id, k)]
            result = by_id[tool_result_id(plan.turn_id, plan.call_id(k))]
            calls = adapter.tool_call_ids(call)
            if calls != [plan.call_id(k)] or adapter.tool_result_ids(result) != calls:
                problems.append(
                    f"thread {thread_id} turn {plan.turn_id}: tool call {k} {call} "
                    f"is not answered by its result {result}"
                )
        reply = by_id[reply_id(plan.turn_id, plan.tool_calls)]
        want = {
            "role": "assistant",
            "content": f"reply to {user_body(plan.user_ids[-1])['content']}",
        }
        if reply != want:
            problems.append(f"thread {thread_id} turn {plan.turn_id}: reply {reply} != {want}")
    dangling = adapter.dangling_tool_calls(content.records)
    if dangling:
        problems.append(f"thread {thread_id}: tool calls without results: {sorted(dangling)}")
    if lease is not None:
        problems.append(f"thread {thread_id}: lease still held by {lease} after the soak")
    if content.state != ledger.states.get(thread_id):
        problems.append(
            f"thread {thread_id}: state {content.state} != {ledger.states.get(thread_id)}"
        )
    return problems


def figures_line(figures: dict[str, Any]) -> str:
    return "SOAK FIGURES " + json.dumps(figures, sort_keys=False)


def counters(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in sorted(client.hgetall(key).items())}


def turn_figures(
    hot: redis.Redis, threads: Threads, plans: Sequence[TurnPlan], kill_times: Sequence[float]
) -> tuple[dict[str, Any], list[str]]:
    """Tool executions per tool call id, and how long the turns a kill hit took to
    finish after it, from the test tool's counters and the turn records. A tool call
    executed twice must have had a kill between its two starts."""
    problems: list[str] = []
    twice: list[str] = []
    executions = 0
    recoveries: list[float] = []
    for plan in plans:
        thread_id = plan.turn_id.split(".turn", 1)[0]
        for k in range(plan.tool_calls):
            call = plan.call_id(k)
            starts = [float(t) for t in hot.lrange(f"test:toolstarts:{call}", 0, -1)]
            executions += len(starts)
            if len(starts) == 1:
                continue
            explained = all(
                any(a < kill < b for kill in kill_times) for a, b in itertools.pairwise(starts)
            )
            twice.append(f"{call} x{len(starts)} ({'a kill inside it' if explained else '?'})")
            if not explained or not starts:
                problems.append(f"tool call {call} ran {len(starts)} times with no kill between")
        status = threads.turns.status(thread_id, plan.turn_id)
        if status is None or status.finished_ms is None or status.started_ms is None:
            continue  # records are bounded; a soak keeps far fewer than 200 per thread
        if status.wakes or status.takeovers:
            started, finished = status.started_ms / 1000, status.finished_ms / 1000
            hits = [kill for kill in kill_times if started <= kill <= finished]
            if hits:
                recoveries.append(finished - max(hits))
    figures = {
        "tool_calls": sum(p.tool_calls for p in plans),
        "tool_executions": executions,
        "tool_calls_executed_twice": twice,
        "turns_recovered": len(recoveries),
        "recovery_s_median": round(statistics.median(recoveries), 1) if recoveries else None,
        "recovery_s_max": round(max(recoveries), 1) if recoveries else None,
    }
    return figures, problems

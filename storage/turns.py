"""Turn records: the durable truth about each agent turn, kept with its thread.

A turn is a fixed list of steps (open, lease, append, the agent run, flush; see
``tasks/turns.py``). Its record lives in the thread's hash slot (``ns:{tid}:runs``)
and goes submitted -> running (which step, which execution, a heartbeat deadline)
-> finished, or failing -> failed with the typed error. It also keeps the turn's
timings, its model usage and how often each tool call ran.

Celery messages only *wake* steps. Every step first *claims* the record
(``begin``) with a token of its own execution: a step runs only if it is the next
one and no other execution holds a live claim, so a duplicate delivery of a step
that runs elsewhere does nothing, and a step whose worker died (its heartbeat
stopped) is taken over. ``wake`` is how the turn reconciler finds such turns: the
turn index (sharded ZSETs, written at submit) says when to look at each turn
again, and a due turn whose deadline passed is handed back with the step to
re-send. All of it is one Lua script per call, so two reconcilers, or a
reconciler and a slow worker that is still alive, can never both win.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from storage.calls import text as _text
from storage.errors import AgentThreadsError, InvalidMessage
from storage.hot import HotStore
from storage.keys import validate_message_id, validate_thread_id
from storage.records import JSON

ENDED = ("finished", "failed")
TURN_RECORDS_KEPT = 200
"""Ended turn records kept per thread (the oldest is dropped at the next submit)."""
UNWRITTEN_RETENTION_MS = 7 * 24 * 3600 * 1000
"""Expiry of the records of a thread that was never written (its turn never began)."""
MAX_WAKE_WAIT_MS = 10 * 60 * 1000
"""The longest back-off between two re-wakes of one turn."""


@dataclass(frozen=True)
class TurnStatus:
    """One turn record, as ``ThreadClient.turn_status`` and ``inspect`` show it."""

    thread_id: str
    turn_id: str
    state: str
    """submitted, running, failing (its cleanup is pending), finished or failed."""
    steps: list[str]
    step: int | str | None
    """The step running or last begun (an index into ``steps``, or "cleanup")."""
    done: int
    """The last step that finished (-1: none)."""
    attempt: int
    """Step executions begun (1 per step when nothing went wrong)."""
    takeovers: int
    """Claims taken over from an execution whose heartbeat had stopped."""
    wakes: int
    """Times the reconciler re-sent a step (a dead worker, a lost message)."""
    submitted_ms: int | None
    started_ms: int | None
    finished_ms: int | None
    deadline_ms: int | None
    worker: str | None
    task_id: str | None
    timings: dict[str, int]
    """Milliseconds spent per step name."""
    usage: list[dict[str, Any]]
    """One entry per model call: model, input_tokens, output_tokens, call key."""
    tools: dict[str, dict[str, Any]]
    """Tool call id -> {"runs": executions begun, "done": result stored}."""
    error: dict[str, Any] | None
    result: Any
    record: dict[str, Any] = field(repr=False)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def input_tokens(self) -> int:
        return sum(int(u.get("input_tokens") or 0) for u in self.usage)

    @property
    def output_tokens(self) -> int:
        return sum(int(u.get("output_tokens") or 0) for u in self.usage)

    @property
    def duration_ms(self) -> int | None:
        if self.submitted_ms is None or self.finished_ms is None:
            return None
        return self.finished_ms - self.submitted_ms

    @classmethod
    def from_record(cls, thread_id: str, turn_id: str, record: dict[str, Any]) -> TurnStatus:
        steps = [str(s) for s in _as_list(record.get("steps"))]
        step = record.get("step")
        claim = _as_dict(record.get("claim"))
        timings = {
            _step_name(steps, name): int(ms) for name, ms in _as_dict(record.get("timings")).items()
        }
        return cls(
            thread_id=thread_id,
            turn_id=turn_id,
            state=str(record.get("state", "submitted")),
            steps=steps,
            step=step if isinstance(step, int | str) else None,
            done=int(record.get("done", -1)),
            attempt=int(record.get("attempt", 0)),
            takeovers=int(record.get("takeovers", 0)),
            wakes=int(record.get("wakes", 0)),
            submitted_ms=_int(record.get("submitted_ms")),
            started_ms=_int(record.get("started_ms")),
            finished_ms=_int(record.get("finished_ms")),
            deadline_ms=_int(record.get("deadline")),
            worker=claim.get("worker") or None,
            task_id=claim.get("task_id") or None,
            timings=timings,
            usage=[u for u in _as_list(record.get("usage")) if isinstance(u, dict)],
            tools={k: v for k, v in _as_dict(record.get("tools")).items() if isinstance(v, dict)},
            error=record.get("error") if isinstance(record.get("error"), dict) else None,
            result=record.get("result"),
            record=record,
        )


@dataclass(frozen=True)
class Begin:
    """What ``TurnStore.begin`` decided for one execution of a step."""

    outcome: str
    """ok (run it), missing (no record), ended, done (the step already finished),
    early (an earlier step has not finished), busy (a live claim elsewhere), held
    (another turn holds the thread's lease)."""
    detail: str = ""
    wait_ms: int = 0
    status: TurnStatus | None = None


@dataclass(frozen=True)
class Wake:
    """A turn the reconciler re-wakes: send ``step`` (and what follows) again."""

    thread_id: str
    turn_id: str
    step: int | str
    spec: dict[str, Any]
    status: TurnStatus


@dataclass(frozen=True)
class TurnReconcileReport:
    due: int = 0
    woken: list[Wake] = field(default_factory=list)
    later: int = 0
    gone: int = 0


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []  # Lua's cjson encodes [] as {}


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _step_name(steps: Sequence[str], name: str) -> str:
    return steps[int(name)] if name.isdigit() and int(name) < len(steps) else name


def _member(thread_id: str, turn_id: str) -> str:
    return json.dumps([thread_id, turn_id], separators=(",", ":"))


class TurnStore:
    """The turn records of one hot tier (``Threads.turns``)."""

    def __init__(self, hot: HotStore) -> None:
        self.hot = hot

    def _run(self, name: str, thread_id: str, args: Sequence[Any]) -> list[Any]:
        reply: list[Any] = self.hot._call(name, self.hot.keys(thread_id).data, args)
        return reply

    def _index(self, thread_id: str, turn_id: str, deadline_ms: int) -> None:
        key = self.hot.layout.turns_of(thread_id)
        self.hot._redis_call(
            lambda: self.hot.redis.zadd(key, {_member(thread_id, turn_id): deadline_ms}),
            "the turn index",
        )

    def _unindex(self, thread_id: str, turn_id: str) -> None:
        key = self.hot.layout.turns_of(thread_id)
        self.hot._redis_call(
            lambda: self.hot.redis.zrem(key, _member(thread_id, turn_id)), "the turn index"
        )

    # -- the record ---------------------------------------------------------------

    def submit(
        self,
        thread_id: str,
        turn_id: str,
        *,
        steps: Sequence[str],
        spec: Mapping[str, Any],
        lease_ms: int,
    ) -> TurnStatus:
        """Record a submitted turn (idempotent: a known turn's record is returned).
        The index entry is written first, so a submitted turn is always found."""
        validate_thread_id(thread_id)
        validate_message_id(turn_id, what="turn id")
        if not steps:
            raise InvalidMessage("a turn needs at least one step")
        # the index is only a wake-up schedule: this host's clock is close enough
        self._index(thread_id, turn_id, int(time.time() * 1000) + lease_ms)
        record = {"state": "submitted", "steps": list(steps), "done": -1, "lease_ms": lease_ms}
        reply = self._run(
            "turn_submit",
            thread_id,
            [
                turn_id,
                json.dumps(record),
                json.dumps(spec, separators=(",", ":")),
                TURN_RECORDS_KEPT,
                UNWRITTEN_RETENTION_MS,
            ],
        )
        status = _text(reply[0])
        if status == "finished":  # ended before turn records existed
            self._unindex(thread_id, turn_id)
            done = {"state": "finished", "steps": list(steps), "done": len(steps) - 1}
            return TurnStatus.from_record(thread_id, turn_id, done)
        return TurnStatus.from_record(thread_id, turn_id, json.loads(reply[1]))

    def status(self, thread_id: str, turn_id: str) -> TurnStatus | None:
        """The turn's record; None if no such turn is known."""
        validate_thread_id(thread_id)
        validate_message_id(turn_id, what="turn id")
        key = self.hot.keys(thread_id).runs
        raw = self.hot._redis_call(lambda: self.hot.redis.hget(key, turn_id), "a turn record")
        if raw is None:
            return None
        return TurnStatus.from_record(thread_id, turn_id, json.loads(raw))

    def list(self, thread_id: str) -> list[TurnStatus]:
        """Every turn record the thread keeps, oldest first."""
        validate_thread_id(thread_id)
        key = self.hot.keys(thread_id).runs
        flat = self.hot._redis_call(lambda: self.hot.redis.hgetall(key), "turn records")
        turns = [
            TurnStatus.from_record(thread_id, _text(k), json.loads(v))
            for k, v in flat.items()
            if not _text(k).startswith(("#", "spec:"))
        ]
        return sorted(turns, key=lambda t: int(t.record.get("seq", 0)))

    def spec(self, thread_id: str, turn_id: str) -> dict[str, Any] | None:
        """How to re-wake the turn (kept until it ends)."""
        key = self.hot.keys(thread_id).runs
        raw = self.hot._redis_call(
            lambda: self.hot.redis.hget(key, f"spec:{turn_id}"), "a turn record"
        )
        spec: dict[str, Any] | None = None if raw is None else json.loads(raw)
        return spec

    # -- steps --------------------------------------------------------------------

    def begin(
        self,
        thread_id: str,
        turn_id: str,
        step: int | str,
        *,
        token: str,
        worker: str,
        task_id: str,
        lease_ms: int,
        held_wait_ms: int = 60_000,
    ) -> Begin:
        """Claim ``step`` for the execution ``token`` (see ``Begin.outcome``). A turn
        that finds another turn's lease is not re-woken for ``held_wait_ms``."""
        args = [turn_id, step, token, worker, task_id, int(lease_ms), int(held_wait_ms)]
        reply = self._run("turn_begin", thread_id, args)
        outcome = _text(reply[0])
        if outcome == "ok":
            record = json.loads(reply[1])
            return Begin("ok", status=TurnStatus.from_record(thread_id, turn_id, record))
        if outcome in ("busy", "held"):
            return Begin(outcome, detail=_text(reply[1]), wait_ms=max(0, int(reply[2])))
        return Begin(outcome, detail=_text(reply[1]) if len(reply) > 1 else "")

    def heartbeat(self, thread_id: str, turn_id: str, *, token: str, lease_ms: int) -> bool:
        """Renew the claim of execution ``token`` and the turn's lease; False if the
        claim is no longer its own (taken over, or the turn ended)."""
        reply = self._run("turn_heartbeat", thread_id, [turn_id, token, int(lease_ms)])
        return _text(reply[0]) == "ok"

    def end(
        self,
        thread_id: str,
        turn_id: str,
        *,
        token: str,
        outcome: str,
        step_ms: int,
        last: bool,
        lease_ms: int,
        wait_ms: int,
        payload: JSON = None,
        cleanup: bool = False,
    ) -> str | None:
        """Report how the claimed step ended ("done", "retry" or "failed"); the turn's
        state after it, or None if the claim was not this execution's (then nothing
        changed, and the caller must not continue the turn)."""
        if outcome not in ("done", "retry", "failed"):
            raise ValueError(f"unknown step outcome {outcome!r}")
        reply = self._run(
            "turn_end",
            thread_id,
            [
                turn_id,
                token,
                outcome,
                max(0, int(step_ms)),
                "1" if last else "0",
                int(lease_ms),
                max(0, int(wait_ms)),
                json.dumps(payload, separators=(",", ":")),
                "1" if cleanup else "0",
            ],
        )
        if _text(reply[0]) != "ok":
            return None
        state = _text(reply[1])
        if state in ENDED:
            self._unindex(thread_id, turn_id)
        return state

    def note_usage(
        self, thread_id: str, turn_id: str, call_key: str, usage: Mapping[str, Any]
    ) -> None:
        """Add one model call's usage (input/output tokens, model) to the record."""
        self._run("turn_note", thread_id, [turn_id, "usage", call_key, json.dumps(dict(usage))])

    def tool_begin(self, thread_id: str, turn_id: str, call_id: str, *, token: str) -> int | None:
        """Count one execution of tool call ``call_id``: how many have begun, this one
        included (0 without a record); None if ``token``'s claim was taken over (the
        tool must not run)."""
        reply = self._run("turn_note", thread_id, [turn_id, "tool_begin", token, call_id])
        outcome = _text(reply[0])
        if outcome == "superseded":
            return None
        return int(reply[1]) if outcome == "ok" else 0

    def tool_end(self, thread_id: str, turn_id: str, call_id: str) -> None:
        self._run("turn_note", thread_id, [turn_id, "tool_end", "", call_id])

    # -- the reconciler -------------------------------------------------------------

    def reconcile(self, *, limit_per_shard: int = 100) -> TurnReconcileReport:
        """Look at the due turns of every index shard (at most ``limit_per_shard``
        each): drop the ended ones, re-score those still alive, and return the turns
        to re-wake (their deadline has passed; each is handed out once)."""
        woken: list[Wake] = []
        due = later = gone = 0
        redis = self.hot.redis
        now = self._now_ms()
        for shard in self.hot.layout.turn_shards:
            members = self._redis(redis.zrangebyscore, shard, "-inf", now, 0, limit_per_shard)
            for member in members:
                due += 1
                try:
                    thread_id, turn_id = json.loads(member)
                except (ValueError, TypeError):
                    self._redis(redis.zrem, shard, member)
                    continue
                reply = self._run("turn_wake", thread_id, [turn_id, MAX_WAKE_WAIT_MS])
                outcome = _text(reply[0])
                if outcome == "gone":
                    gone += 1
                    self._redis(redis.zrem, shard, member)
                    continue
                score = int(reply[1]) if outcome == "later" else int(reply[3])
                self._redis(redis.zadd, shard, {member: score})
                if outcome == "later":
                    later += 1
                    continue
                step_text = _text(reply[1])
                step: int | str = int(step_text) if step_text.isdigit() else step_text
                status = TurnStatus.from_record(thread_id, turn_id, json.loads(reply[4]))
                woken.append(Wake(thread_id, turn_id, step, json.loads(reply[2]), status))
        return TurnReconcileReport(due=due, woken=woken, later=later, gone=gone)

    def _now_ms(self) -> int:
        """Redis' clock (the scripts' clock), in ms."""
        seconds, micros = self._redis(self.hot.redis.time)
        return int(seconds) * 1000 + int(micros) // 1000

    def _redis(self, command: Callable[..., Any], *args: Any) -> Any:
        """One plain Redis command (the turn index, the clock), with the hot tier's
        error mapping."""
        return self.hot._redis_call(lambda: command(*args), "the turn index")

    def pending(self) -> int:
        """Turns in the index (not ended, or ended and not yet dropped)."""
        return sum(int(self._redis(self.hot.redis.zcard, s)) for s in self.hot.layout.turn_shards)


# -- the running step (set by the worker, read by the tool helper on Adapter) -------


class StepSuperseded(AgentThreadsError):
    """This execution's claim on a turn step was taken over (its heartbeat was seen as
    stopped): another execution continues the turn, this one must stop."""


@dataclass
class StepRun:
    """One execution of one step of a turn, while it runs (``current_step()``)."""

    turns: TurnStore
    thread_id: str
    turn_id: str
    step: int | str
    token: str
    lease_ms: int
    superseded: threading.Event = field(default_factory=threading.Event)

    @property
    def alive(self) -> bool:
        """False once another execution took the claim over (stop doing side effects)."""
        return not self.superseded.is_set()


_current: ContextVar[StepRun | None] = ContextVar("agent_threads_step", default=None)


def current_step() -> StepRun | None:
    """The turn step this thread of execution runs, if any."""
    return _current.get()


@contextlib.contextmanager
def step_context(run: StepRun) -> Iterator[StepRun]:
    """Make ``run`` the current step for the block."""
    reset = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(reset)

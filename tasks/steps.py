"""Running one step of a turn: claim it in the turn record, keep it alive, report it.

Every step of an ``agent_turn`` canvas carries the turn id and its step number in
its message headers. ``ThreadTask`` (the base of the threads.* tasks and of your
agent tasks) runs such a task through ``run_step``:

1. **claim** the step (``TurnStore.begin``) with a token of this execution. A
   delivery that may not run it is dropped with ``Ignore`` (acknowledged, no
   result, the chain does not go on): the turn ended, the step already finished,
   an earlier one has not, or another execution holds a live claim (a duplicate
   delivery, a client's re-send, a reconciler's re-wake racing a slow worker).
   Dropping is safe because the turn reconciler re-wakes the step if the live
   execution dies. Another turn holding the thread's lease is a ``LeaseHeld``
   retry.
2. **heartbeat**: while the step runs, the process's heartbeat thread
   (``Heartbeats``, one for all the steps a worker runs) renews the claim and the
   turn's lease every ``heartbeat_ms``, so a step of any length keeps the thread
   and a dead worker's turn is released within one lease (``lease_ttl_ms``).
3. **report** (``TurnStore.end``): done (the last step ends the turn with its
   result), retry (after the countdown anyone may claim it), or failed (the turn
   fails, after its cleanup step flushed the thread and released the lease). A
   claim taken over meanwhile makes the report a no-op and the step is dropped, so
   only one execution continues the turn.

``storage.turns.current_step()`` is the running step, for the tool helper on
``Adapter``: it runs a tool only while its execution holds the claim.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry

from storage.errors import AgentThreadsError, LeaseHeld
from storage.tiered import Threads
from storage.turns import StepRun, StepSuperseded, step_context

log = logging.getLogger(__name__)

TURN_HEADER = "agent_threads_turn_id"
"""Message header that ``agent_turn`` puts on each of its steps (turn id of the step)."""

STEP_HEADER = "agent_threads_turn_step"
"""Message header: the step of the turn (an index into its steps, or "cleanup")."""
SPEC_HEADER = "agent_threads_turn_spec"
"""Message header of a turn's first step: its spec, for a turn no client recorded."""
CLEANUP = "cleanup"
CLEANED_STEPS = ("append", "run")
"""Steps whose permanent failure is followed by the cleanup step (flush + release)."""


def step_of(request: Any) -> int | str | None:
    """The turn step a task request runs (None: not a turn step)."""
    if request is None or getattr(request, "called_directly", True):
        return None
    step = request.get(STEP_HEADER)
    if step is None or request.get(TURN_HEADER) is None:
        return None
    if isinstance(step, int):
        return step
    text = str(step)
    return CLEANUP if text == CLEANUP else int(text) if text.isdigit() else None


class _Beat:
    """One running step in the heartbeat schedule."""

    __slots__ = ("due", "every", "run")

    def __init__(self, run: StepRun, every_s: float) -> None:
        self.run = run
        self.every = every_s
        self.due = time.monotonic() + every_s


class Heartbeats:
    """The heartbeats of every step running in this process, renewed by one daemon
    thread: a step registers and deregisters (a lock and a notify) instead of
    starting and joining a thread of its own, which cost more than the claim's
    round trips on a busy worker. Started lazily, and again in a forked child."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._beats: set[_Beat] = set()
        self._thread: threading.Thread | None = None

    def add(self, run: StepRun, every_ms: int) -> _Beat:
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            self._reset()
        beat = _Beat(run, every_ms / 1000)
        with self._cond:
            earliest = min((b.due for b in self._beats), default=float("inf"))
            self._beats.add(beat)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="agent-threads-heartbeats", daemon=True
                )
                self._thread.start()
            elif beat.due < earliest:  # the loop sleeps until a later beat: wake it
                self._cond.notify()
        return beat

    def remove(self, beat: _Beat) -> None:
        with self._cond:
            self._beats.discard(beat)  # the loop may be renewing it: harmless, it ended

    def _loop(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [b for b in self._beats if b.due <= now]
                if not due:
                    nearest = min((b.due for b in self._beats), default=now + 3600)
                    self._cond.wait(nearest - now)
                    continue
                for beat in due:
                    beat.due = now + beat.every
            for beat in due:
                if beat in self._beats:
                    self._renew(beat)

    def _renew(self, beat: _Beat) -> None:
        """Renew the claim and lease of ``beat``'s step; a claim taken over marks the
        step superseded. A step that ended while its beat was in flight is left alone
        (its claim is gone because it reported, not because it was taken over)."""
        run = beat.run
        try:
            alive = run.turns.heartbeat(
                run.thread_id, run.turn_id, token=run.token, lease_ms=run.lease_ms
            )
        except Exception as exc:  # a Redis blip: the next beat tries again
            log.warning("turn %s: heartbeat failed: %s", run.turn_id, exc)
            return
        if alive:
            return
        with self._cond:
            running = beat in self._beats
            self._beats.discard(beat)
        if running:
            log.warning(
                "turn %s step %s: the claim was taken over; this execution stops doing "
                "side effects",
                run.turn_id,
                run.step,
            )
            run.superseded.set()


HEARTBEATS = Heartbeats()


@contextlib.contextmanager
def heartbeat(run: StepRun, every_ms: int) -> Iterator[None]:
    """Renew ``run``'s claim and lease every ``every_ms`` until the block ends."""
    beat = HEARTBEATS.add(run, every_ms)
    try:
        yield
    finally:
        HEARTBEATS.remove(beat)


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)[:2000]}


def run_step(
    task: Task[Any, Any],
    threads: Threads,
    step: int | str,
    body: Callable[[], Any],
    kwargs: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> Any:
    """Run one turn step's ``body`` as the holder of its claim (module docstring)."""
    request = task.request
    turn_id = str(request.get(TURN_HEADER))
    thread_id = str(kwargs.get("thread_id"))
    lease_ms = int(settings.get("lease_ttl_ms", 20_000))
    every_ms = int(settings.get("heartbeat_ms", max(100, lease_ms // 4)))
    turns = threads.turns
    spec = request.get(SPEC_HEADER)
    if step == 0 and isinstance(spec, dict):  # a turn sent without ThreadClient
        turns.submit(thread_id, turn_id, steps=spec.get("steps", []), spec=spec, lease_ms=lease_ms)
    run = StepRun(turns, thread_id, turn_id, step, uuid.uuid4().hex, lease_ms)
    claim = turns.begin(
        thread_id,
        turn_id,
        step,
        token=run.token,
        worker=str(request.hostname or socket.gethostname()),
        task_id=str(request.id),
        lease_ms=lease_ms,
    )
    if claim.outcome == "missing":  # a turn with no record (pruned, or never recorded)
        return body()
    if claim.outcome == "held":
        raise task.retry(exc=LeaseHeld(thread_id, claim.detail, claim.wait_ms))
    if claim.outcome != "ok":
        log.info("turn %s step %s not run here: %s", turn_id, step, claim.outcome)
        raise Ignore()
    status = claim.status
    last = status is not None and step == len(status.steps) - 1
    started = time.monotonic()

    def report(outcome: str, *, wait_ms: int, payload: Any = None, cleanup: bool = False) -> Any:
        return turns.end(
            thread_id,
            turn_id,
            token=run.token,
            outcome=outcome,
            step_ms=int((time.monotonic() - started) * 1000),
            last=last,
            lease_ms=lease_ms,
            wait_ms=wait_ms,
            payload=payload,
            cleanup=cleanup,
        )

    try:
        with step_context(run), heartbeat(run, every_ms):
            result = body()
    except Retry as retry:
        countdown = _countdown_ms(retry)
        report("retry", wait_ms=countdown + lease_ms)
        raise
    except Ignore:
        report("retry", wait_ms=lease_ms)
        raise
    except StepSuperseded as exc:
        log.warning("turn %s step %s: %s", turn_id, step, exc)
        raise Ignore() from exc
    except Exception as exc:
        name = status.steps[step] if status and isinstance(step, int) else str(step)
        cleanup = name.split(":", 1)[0] in CLEANED_STEPS
        if report("failed", wait_ms=lease_ms, payload=_error(exc), cleanup=cleanup) is None:
            # another execution holds the claim: it goes on; no error path from here
            raise Ignore() from exc
        if not isinstance(exc, AgentThreadsError):
            log.warning("turn %s failed in step %s: %s", turn_id, name, exc)
        raise
    if report("done", wait_ms=lease_ms, payload=result if last else None) is None:
        log.warning("turn %s step %s: superseded; the turn goes on elsewhere", turn_id, step)
        raise Ignore()
    return result


def _countdown_ms(retry: Retry) -> int:
    when: Any = retry.when  # seconds, or an eta (datetime)
    if isinstance(when, int | float):
        return int(when * 1000)
    if hasattr(when, "timestamp"):
        return max(0, int((when.timestamp() - time.time()) * 1000))
    return 0

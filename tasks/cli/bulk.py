"""``flush-idle``, ``flush``, ``hydrate`` and ``delete``: many threads at once, with a
progress bar on a terminal, a summary of counts, and exit status 1 if any thread failed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from tasks.cli import render
from tasks.cli.context import DURATION, current_store, service_app, service_settings
from tasks.cli.ops.bulk import BulkReport, Outcome, flush_many, hydrate_many, run_on_workers


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[Outcome], None]]:
    """A progress bar on stderr (drawn only on a terminal)."""
    console = render.console(stderr=True)
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("", total=total)
        yield lambda outcome: progress.update(task, advance=1, description=outcome.thread_id)


def _summarize(verb: str, report: BulkReport, statuses: Sequence[str]) -> None:
    counts = report.counts
    total = len(report.outcomes)
    rare = [s for s in counts if s not in (*statuses, "failed")]  # e.g. "merged"
    parts = [f"{counts.get(s, 0)} {s}" for s in (*statuses, *rare, "failed")]
    line = f"{verb}: {total} thread{'' if total == 1 else 's'}: " + ", ".join(parts)
    if verb == "flush":
        evicted = sum(1 for o in report.outcomes if o.evicted)
        kept = sum(1 for o in report.outcomes if o.detail == "kept hot")
        line += f" ({evicted} evicted, {kept} kept hot)"
    click.echo(line)
    for outcome in report.failed:
        click.echo(f"  failed {outcome.thread_id}: {outcome.detail}", err=True)
    if report.failed:
        sys.exit(1)


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def _ids_from_file(path: str) -> list[str]:
    """One thread id per line, exactly as written (ids may hold spaces and ``#``);
    empty lines and lines starting with ``#`` are skipped; ``-`` is stdin."""
    stream = click.open_file(path, "r", encoding="utf-8", errors="strict")
    with stream:
        lines = [line.rstrip("\r\n") for line in stream]
    return [line for line in lines if line and not line.startswith("#")]


@click.command("flush-idle")
@click.option(
    "--older-than",
    "older_than",
    **DURATION,
    default=None,
    help="idle time (default AGENT_THREADS_IDLE_SECONDS)",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
    help="flushes in flight at once",
)  # fmt: skip
@render.errors
def flush_idle(older_than: float | None, limit: int, concurrency: int) -> None:
    """Archive and evict threads idle longer than --older-than, as the beat task does
    (a thread whose turn holds its lease stays hot). Exits 1 if any flush failed;
    does nothing while another idle flush of the namespace runs (the beat's)."""
    idle = service_settings()["idle_seconds"] if older_than is None else older_than
    report = current_store().flush_idle(idle, limit=limit, concurrency=concurrency)
    if report.locked:
        click.echo("another idle flush of this namespace is running: nothing done")
        return
    click.echo(
        f"{report.candidates} idle, {len(report.evicted)} evicted, {len(report.kept)} kept hot, "
        f"{len(report.failed)} failed"
    )
    for failure in report.failed:
        click.echo(f"  failed: {failure}", err=True)
    if report.failed:
        sys.exit(1)


_VIA_WORKERS = click.option(
    "--via-workers",
    is_flag=True,
    help="send threads.* tasks to the Celery workers (their storage settings) and wait",
)


@click.command()
@click.argument("thread_ids", nargs=-1)
@click.option("--all-idle", is_flag=True, help="every thread idle longer than --older-than")
@click.option(
    "--older-than",
    **DURATION,
    default=None,
    help="with --all-idle (default AGENT_THREADS_IDLE_SECONDS)",
)
@click.option("--limit", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--keep-hot", is_flag=True, help="archive only; do not evict from Redis")
@_VIA_WORKERS
@render.errors
def flush(
    thread_ids: tuple[str, ...],
    all_idle: bool,
    older_than: float | None,
    limit: int,
    keep_hot: bool,
    via_workers: bool,
) -> None:
    """Archive threads to the cold tier (upload only if changed) and evict them from
    Redis unless a turn holds their lease. Prints archived / unchanged / absent /
    failed counts; one thread's failure does not stop the others; exits 1 if any failed.
    """
    if bool(thread_ids) == all_idle:
        raise click.UsageError("give thread ids or --all-idle (not both)")
    store = current_store()
    if all_idle:
        idle = service_settings()["idle_seconds"] if older_than is None else older_than
        ids = [tid for tid, _ in store.hot.idle_threads(int(idle * 1000), limit)]
    else:
        ids = _unique(thread_ids)
    with _progress("flush", len(ids)) as advance:
        if via_workers:
            kwargs = {"evict": not keep_hot}
            report = run_on_workers(
                service_app(), "threads.flush", ids, kwargs=kwargs, progress=advance
            )
        else:
            report = flush_many(store, ids, evict=not keep_hot, progress=advance)
    _summarize("flush", report, ("archived", "unchanged", "absent"))


@click.command()
@click.argument("thread_ids", nargs=-1)
@click.option(
    "--from-file",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="thread ids, one per line ('-': stdin)",
)
@_VIA_WORKERS
@render.errors
def hydrate(thread_ids: tuple[str, ...], from_file: str | None, via_workers: bool) -> None:
    """Restore archived threads into Redis (a hot thread is left as it is). Prints
    restored / hot / absent / failed counts; exits 1 if any failed."""
    ids = list(thread_ids) + (_ids_from_file(from_file) if from_file else [])
    if not ids:
        raise click.UsageError("give thread ids or --from-file")
    ids = _unique(ids)
    with _progress("hydrate", len(ids)) as advance:
        if via_workers:
            report = run_on_workers(service_app(), "threads.hydrate", ids, progress=advance)
        else:
            report = hydrate_many(current_store(), ids, progress=advance)
    _summarize("hydrate", report, ("restored", "hot", "absent"))


@click.command()
@click.argument("thread_ids", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@render.errors
def delete(thread_ids: tuple[str, ...], yes: bool) -> None:
    """Delete threads from both tiers (hot keys and cold archive). Asks first unless
    --yes. Exits 1 if any deletion failed."""
    ids = _unique(thread_ids)
    if not yes:
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        click.confirm(f"Delete {len(ids)} thread(s) from both tiers ({shown})?", abort=True)
    store = current_store()

    def remove(thread_id: str) -> Outcome:
        return Outcome(thread_id, "deleted" if store.delete(thread_id) else "absent")

    with _progress("delete", len(ids)) as advance:
        outcomes = []
        for thread_id in ids:
            try:
                outcome = remove(thread_id)
            except Exception as exc:  # one thread's failure never stops the others
                outcome = Outcome(thread_id, "failed", str(exc))
            outcomes.append(outcome)
            advance(outcome)
    _summarize("delete", BulkReport(tuple(outcomes)), ("deleted", "absent"))

"""Baseline tasks for the Celery benchmark (imported by its worker)."""

from __future__ import annotations

from tasks.app import app


@app.task(name="bench.noop")
def noop(*_: object, **__: object) -> None:
    """Does nothing: the cost of a Celery round trip alone."""

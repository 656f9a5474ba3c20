"""Celery settings for agent-threads; every value can be overridden by environment variables.

Only the settings that already hold are here; the thread tasks, routes and the
beat schedule arrive with the Celery tasks issue (see DESIGN.md section 5).
"""

from __future__ import annotations

import os

broker_url = os.environ.get("AGENT_THREADS_BROKER_URL", "redis://127.0.0.1:6379/0")
result_backend = os.environ.get("AGENT_THREADS_RESULT_BACKEND", broker_url)

# JSON only: a pickled message must never be executed.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Redelivery after a worker crash: acknowledge after the task ran, one message at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

"""The service deployment's Celery config (docker-compose sets
``AGENT_THREADS_CONFIG_MODULE=celeryconfig``): the packaged service config, which reads
every ``AGENT_THREADS_*`` variable (see ``tasks/service/config.py`` for the table), plus
whatever this deployment changes below. This file is not part of the installed
distribution: a project's own ``celeryconfig`` is never shadowed by it.
"""

from tasks.service.config import *  # noqa: F403

# Deployment-specific changes go here, e.g.:
# agent_threads = {**agent_threads, "ttl_seconds": 7 * 24 * 3600}

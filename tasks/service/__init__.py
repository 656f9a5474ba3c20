"""The standalone service: its config from ``AGENT_THREADS_*`` variables (``config.py``).

The service's app is ``tasks.app.app`` (``agent-threads worker``, ``celery -A
tasks.app worker``, docker-compose); an app of your own uses ``tasks.install``.
"""

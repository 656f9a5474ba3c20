"""agent-threads' Celery layer: the thread tasks, agent turns, clients and the CLI.

* ``install(app)`` (``integration.py``) adds the tasks, routes and beat entries to your
  own Celery app; settings live in ``app.conf.agent_threads`` (``settings.py``).
* ``threads.py`` the ``threads.*`` tasks (shared tasks), ``base.py`` their retry
  policy (``ThreadTask``), ``turns.py`` + ``steps.py`` the durable ``agent_turn``,
  ``client.py`` (and ``aio.py``) the clients, ``models/`` the model-turn tasks.
* ``app.py`` + ``service/`` the standalone service (``agent-threads worker``);
  ``cli/`` the command line; ``observability/`` logs and metrics, off until switched
  on; ``local/`` the demo and the worker processes of tests.

Importing any of these modules registers shared tasks at most; nothing is configured,
connected or started until you call ``install`` (or run the service).
"""

from tasks.integration import install

__all__ = ["install"]

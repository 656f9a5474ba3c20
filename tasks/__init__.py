"""agent-threads' Celery layer: the tasks over ``storage/``, agent turns, clients, the
standalone service and its command line.

Top-level modules:

* ``integration.py``: ``install(app)`` adds the tasks, routes and beat entries to your
  Celery app; ``settings.py`` its ``app.conf.agent_threads`` keys and defaults;
  ``stores.py`` the storage of each worker process; ``preflight.py`` the settings check
  a worker runs at start;
* ``threads.py``: the ``threads.*`` shared tasks, ``base.py`` their retry policy
  (``ThreadTask``);
* ``turns.py`` + ``steps.py``: the durable ``agent_turn``;
* ``client.py`` (``ThreadClient``) and ``aio.py`` (``AsyncThreadClient``).

Subpackages:

* ``models/``: the model-turn tasks, one module per provider SDK;
* ``observability/``: structured logs and metrics, off until switched on;
* ``service/`` + ``app.py``: the standalone service's config and Celery app;
* ``cli/``: the ``agent-threads`` command (``cli/ops/``: its operations);
* ``local/``: the demo's agent task and the worker processes of the demo and tests.

Importing any of these modules registers shared tasks at most (``app.py`` aside: it is
the service's app); nothing is configured, connected or started until you call ``install``.
"""

from tasks.integration import install

__all__ = ["install"]

"""The operations behind the ``agent-threads`` commands, free of terminal I/O.

Each function takes a ``storage.Threads`` (and, for work sent to the workers, a Celery
app) and returns a typed result that the command of the same family in ``tasks/cli/``
renders as a table, a summary or JSON; tests call them directly:

* ``inspect.py``: ``view_thread``, one consistent view of a thread in either tier;
* ``overview.py``: ``list_hot`` (the activity index, never a key scan), ``collect_stats``;
* ``bulk.py``: ``flush_many`` / ``hydrate_many`` / ``run_on_workers``, where the failure
  of one thread never stops the rest;
* ``snapshots.py``: ``export_snapshot`` / ``read_export`` / ``import_snapshot``;
* ``retention.py``: ``prune_cold``;
* ``durations.py`` and ``summaries.py``: parsing durations, one-line message summaries.
"""

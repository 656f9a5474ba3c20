"""``python -m tasks.cli``: the ``agent-threads`` command."""

from tasks.cli import main

main()

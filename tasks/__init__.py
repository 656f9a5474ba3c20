"""agent-threads Celery layer (the tasks themselves arrive with the Celery issue) and CLI."""

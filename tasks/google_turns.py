"""Model-turn task for the google adapter (registered only if its SDK is installed)."""

"""Model-turn task for the anthropic adapter (registered only if its SDK is installed)."""

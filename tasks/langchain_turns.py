"""Model-turn task for the langchain adapter (registered only if its SDK is installed)."""

"""The model-turn tasks, one module per provider SDK (each registers its task only
if its SDK is installed): ``anthropic``, ``google``, ``langchain``, ``openai``.
Each is the ``run`` step of an ``agent_turn``; ``turn.run_model_turn`` is the
agent loop call and result they share."""

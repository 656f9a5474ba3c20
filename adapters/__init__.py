"""Provider message formats (Anthropic, Google GenAI, LangChain); see DESIGN.md section 6."""

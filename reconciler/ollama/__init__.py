"""The Ollama edge: one server's calls and the pull pool."""

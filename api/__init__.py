"""The ollama-gitops HTTP API: the Ollama Operator API, served by committing to Git."""

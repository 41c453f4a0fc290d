"""Kubernetes mode: models from Git become the seed operator's `OllamaModel` resources, and
ollama-gitops is their controller."""

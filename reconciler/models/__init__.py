"""The model-file format: bytes in Git to validated desired state. Imports nothing of the rest."""

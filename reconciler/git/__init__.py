"""The Git edge: fetch, read objects, commit and push, credentials, the embedded default repository."""

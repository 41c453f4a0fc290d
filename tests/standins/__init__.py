"""In-process stand-ins for the external services the product talks to (used by the tests only)."""

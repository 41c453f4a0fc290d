"""The seed operator's API metrics, with the route template as `path` so that names in paths do
not each make a new time series."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("ollama_api_requests_total", "Total number of HTTP requests to the Ollama API server",
                   ["method", "path", "status"])
DURATION = Histogram("ollama_api_request_duration_seconds", "Duration of HTTP requests to the Ollama API server",
                     ["method", "path"])
WEBHOOKS = Counter("ollama_gitops_webhooks_total", "Webhook deliveries, by provider and outcome "
                   "(accepted, ignored, pong, rejected, unavailable)", ["provider", "outcome"])
CONNECTIONS_CLOSED = Counter("ollama_api_connections_closed_total", "Connections the API closed before their "
                             "request was complete: too slow (over the request bound) or shed (at the "
                             "connection limit, the longest waiting)", ["reason"])
LIST_ITEMS_SERIALISED = Counter("ollama_gitops_api_list_items_serialised_total", "Models serialised into lists: a "
                                "list rebuilt after a change serialises only the models whose file or status changed")

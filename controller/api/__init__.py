"""The controller's HTTP API: status, keys, releases, and what proxies in other processes need.

Proxies watch the route table (`GET /v1/routes`, a long poll), ask for
activations (`POST /v1/activate`) and report activity (`POST /v1/activity`).
Every /v1/* call needs the token and no browser may make one (guard.py);
/healthz, /readyz and /metrics stay open. Every error is JSON.

- app: ControllerAPI, the aiohttp application: its routes, errors, health and status
- proxies, route_feed: what proxies in other processes call, and the route table they watch
  (with its drain overlay)
- keys, changes, apply: API keys; deploy, promote, release; re-reading the config file
- answers: JSON errors and request bodies, as every handler answers and reads them
- guard, token, idempotency, server: who may call; the token file; repeated changes;
  the HTTP server that answers even unparsable requests in JSON

Nothing is imported here: the CLI reads the token (token.py) without loading aiohttp.
"""

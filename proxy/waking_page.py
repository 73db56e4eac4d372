"""The "waking up" page a browser gets from a sleeping instance (`wake_strategy: page`).

A person in a browser sees at once that the service is starting, instead of a
blank tab that spins for the whole cold start; the page reloads itself every
two seconds and the first reload after the instance is ready shows the
service. API clients (no `text/html` in Accept, or a fetch that is not a
navigation) are still held as usual. The page names the service only: no
version, address, error or anything else internal.
"""

from __future__ import annotations

import html

from aiohttp import web

from controller.spec import Route

RELOAD_SECONDS = 2

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{reload}">
<title>{name} is waking up</title>
<style>
body {{ font-family: system-ui, sans-serif; display: grid; place-items: center;
       min-height: 90vh; margin: 0; color: #222; }}
main {{ text-align: center; }}
.dot {{ display: inline-block; width: .6em; height: .6em; margin: 0 .15em;
        border-radius: 50%; background: #888; animation: b 1.2s infinite ease-in-out; }}
.dot:nth-child(2) {{ animation-delay: .2s; }} .dot:nth-child(3) {{ animation-delay: .4s; }}
@keyframes b {{ 0%, 80%, 100% {{ opacity: .2; }} 40% {{ opacity: 1; }} }}
</style>
</head>
<body>
<main>
<h1>{name} is waking up</h1>
<p><span class="dot"></span><span class="dot"></span><span class="dot"></span></p>
<p>It was asleep to save resources. This page reloads by itself in a moment.</p>
</main>
</body>
</html>
"""


def wants_page(request: web.BaseRequest) -> bool:
    """A browser loading a page (not a script's fetch, not an API client)."""
    if request.method not in ("GET", "HEAD"):
        return False
    headers = request.headers
    if "text/html" not in headers.get("Accept", ""):
        return False
    mode = headers.get("Sec-Fetch-Mode")
    return mode is None or mode == "navigate"


def waking_page(route: Route) -> web.Response:
    body = _PAGE.format(name=html.escape(route.service), reload=RELOAD_SECONDS)
    return web.Response(
        status=503, text=body, content_type="text/html", charset="utf-8",
        headers={"Retry-After": str(RELOAD_SECONDS), "Cache-Control": "no-store",
                 "X-Wakegate-Waking": "true"},
    )

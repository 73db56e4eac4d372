"""hello: a tiny HTTP service for wakegate to start, wake and proxy to.

Run it as a local process::

    PORT=8080 python examples/hello/app.py
    python examples/hello/app.py --port 8080 --version-label v2

It binds 127.0.0.1 and, once the socket is bound, prints exactly one line to
stdout (flushed): ``hello <version> listening on 127.0.0.1:<port>``. Port 0
binds an ephemeral port, and the line shows the port actually bound. No access
log. If the port cannot be bound it says so on stderr and exits 1.

Configuration (an argument wins over its environment variable):

    --port / PORT                      port to listen on (default 8080)
    --host / HOST                      address to bind (default 127.0.0.1)
    --version-label / WAKEGATE_VERSION version reported by ``GET /`` (default "dev")
    SERVICE_NAME                       service name reported by ``GET /`` (default "hello")

Behaviour switches for tests (empty means unset; a value that is not an
integer is a configuration error: message on stderr, exit status 2):

    HELLO_STARTUP_DELAY_MS  sleep this long before binding the socket (slow cold
                            start).
    HELLO_EXIT_AT_START     print a message to stderr and exit with this status
                            before binding (a service that fails at start). This
                            is checked before asyncio/aiohttp are imported, so
                            the process is gone within ~30 ms.
    HELLO_READY_AFTER_MS    bind at once, but answer /healthz with 503 until this
                            many ms after the socket was bound.

Endpoints (GET routes also answer HEAD, except /ws, /reset and /crash; a bad
integer query parameter gives 400):

    GET  /healthz                   200 "ok" (503 "starting" while not ready)
    GET  /headers                   request headers as received, as JSON
                                    {name: [values]} (names spelt as received;
                                    repeats, in any letter case, grouped under
                                    the first spelling), plus "remote": the peer
    GET  /ws                        WebSocket echo (text as text, binary as
                                    binary); accepts the "echo" subprotocol
    GET  /stream?chunks=N&interval_ms=M
                                    chunked response (no Content-Length), N
                                    chunks "chunk <i>\\n" (default 5), M ms apart
                                    (default 100), each written as it is made
    GET|POST /slow?ms=N             sleeps N ms (default 0), then 200 {"slept_ms": N}
    POST /echo                      streams the request body back with the same
                                    Content-Type and framing (Content-Length if
                                    the request had one, else chunked)
    GET  /reset                     closes the connection without answering (the
                                    client sees "server disconnected"/"empty
                                    reply"); ``?rst=1`` sends a TCP RST instead
                                    ("connection reset by peer")
    GET  /crash                     the process exits at once with status 3
    GET  /<any other path>          200 {"service", "version", "pid", "path"},
                                    where "path" is the path and query string

SIGTERM or SIGINT shuts down gracefully and exits 0: the listener closes, open
WebSockets are closed (1001 going away), and requests in flight may finish.
aiohttp waits SHUTDOWN_TIMEOUT (0.5 s) for them, then waits up to another
SHUTDOWN_TIMEOUT before cancelling what is left, so the process is gone about
1 s after the signal at worst (a few tens of ms when idle). A signal that
arrives while the service is still starting (importing, or in the startup
delay) also exits 0 at once; only in the first few ms of interpreter start-up
does SIGTERM still kill the process outright.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

_MAIN = __name__ == "__main__"


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        print(f"hello: {name} must be an integer, got {raw!r}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _exit_early(signum: int, frame: object) -> None:
    os._exit(0)  # nothing to clean up yet, and tearing down half an import is slow


if _MAIN:
    # Checked before importing asyncio and aiohttp (~0.3 s): a service that
    # fails at start should fail fast.
    _exit_status = _env_int("HELLO_EXIT_AT_START")
    if _exit_status is not None:
        print(
            f"hello: HELLO_EXIT_AT_START={_exit_status}, exiting before listening",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(_exit_status)
    # A SIGTERM while still importing (the slowest part of the start) exits 0,
    # as it does later on; the event loop installs its own handlers.
    signal.signal(signal.SIGTERM, _exit_early)
    signal.signal(signal.SIGINT, _exit_early)
    # aiohttp creates ~100k objects at import. Collecting while importing is
    # wasted work, and freezing them afterwards keeps them out of every later
    # collection, including the final one at interpreter exit (~90 ms saved on
    # SIGTERM). Only when run as a program: importing this module must not
    # touch the importer's gc or signal settings.
    gc.disable()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402

from aiohttp import WSCloseCode, WSMsgType, web  # noqa: E402

if _MAIN:
    gc.freeze()
    gc.enable()

SHUTDOWN_TIMEOUT = 0.5
ECHO_CHUNK = 64 * 1024

SERVICE_KEY = web.AppKey("service", str)
VERSION_KEY = web.AppKey("version", str)
READY_AT_KEY = web.AppKey("ready_at", float)
WEBSOCKETS_KEY = web.AppKey("websockets", "weakref.WeakSet[web.WebSocketResponse]")


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer\n") from None
    if value < 0:
        raise web.HTTPBadRequest(text=f"{name} must be >= 0\n")
    return value


async def index(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response(
        {
            "service": app[SERVICE_KEY],
            "version": app[VERSION_KEY],
            "pid": os.getpid(),
            "path": request.path_qs,
        }
    )


async def healthz(request: web.Request) -> web.Response:
    if time.monotonic() < request.app[READY_AT_KEY]:
        return web.Response(status=503, text="starting")
    return web.Response(text="ok")


async def headers(request: web.Request) -> web.Response:
    # raw_headers keeps the names exactly as received; repeated headers (in any
    # letter case) are grouped under the spelling seen first.
    out: dict[str, list[str]] = {}
    spelling: dict[str, str] = {}
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("utf-8", "surrogateescape")
        key = spelling.setdefault(name.lower(), name)
        out.setdefault(key, []).append(raw_value.decode("utf-8", "surrogateescape"))
    body: dict[str, object] = dict(out)
    body["remote"] = request.remote
    return web.json_response(body)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("echo",))
    await ws.prepare(request)
    sockets = request.app[WEBSOCKETS_KEY]
    sockets.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    except ConnectionResetError:
        pass  # the peer went away without a close frame
    finally:
        sockets.discard(ws)
    return ws


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = _query_int(request, "chunks", 5)
    interval = _query_int(request, "interval_ms", 100) / 1000
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method == "HEAD":
        # aiohttp would send anything written here, even to a HEAD request.
        return resp
    try:
        for i in range(chunks):
            if i:
                await asyncio.sleep(interval)
            await resp.write(f"chunk {i}\n".encode())
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away
    return resp


async def slow(request: web.Request) -> web.Response:
    ms = _query_int(request, "ms", 0)
    await asyncio.sleep(ms / 1000)
    return web.json_response({"slept_ms": ms})


async def echo(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")}
    )
    if request.content_length is not None:
        resp.content_length = request.content_length
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for chunk in request.content.iter_chunked(ECHO_CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away
    return resp


async def reset(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        if request.query.get("rst") not in (None, "", "0"):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER {on, 0s}: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    # The transport is closing, so aiohttp's attempt to send this fails with a
    # ConnectionResetError, which it treats as a client disconnect: nothing is
    # written and nothing is logged.
    return web.Response(status=204)


async def crash(request: web.Request) -> web.Response:
    os._exit(3)


async def _close_websockets(app: web.Application) -> None:
    for ws in list(app[WEBSOCKETS_KEY]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def make_app(service: str, version: str, ready_after_ms: int = 0) -> web.Application:
    app = web.Application()
    app[SERVICE_KEY] = service
    app[VERSION_KEY] = version
    app[READY_AT_KEY] = time.monotonic() + ready_after_ms / 1000
    app[WEBSOCKETS_KEY] = weakref.WeakSet()
    app.on_shutdown.append(_close_websockets)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/headers", headers)
    app.router.add_get("/ws", websocket, allow_head=False)
    app.router.add_get("/stream", stream)
    app.router.add_route("GET", "/slow", slow)
    app.router.add_route("POST", "/slow", slow)
    app.router.add_post("/echo", echo)
    app.router.add_get("/reset", reset, allow_head=False)
    app.router.add_get("/crash", crash, allow_head=False)
    app.router.add_get("/{tail:.*}", index)
    return app


async def serve(
    host: str, port: int, service: str, version: str, delay_ms: int, ready_after_ms: int
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if delay_ms > 0:
        try:
            await asyncio.wait_for(stop.wait(), delay_ms / 1000)
        except TimeoutError:
            pass
        else:
            return  # asked to stop during the startup delay

    runner = web.AppRunner(
        make_app(service, version, ready_after_ms),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            print(f"hello: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        # runner.addresses holds the bound address, so --port 0 reports the real port.
        bound_port = runner.addresses[0][1]
        print(f"hello {version} listening on {host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="wakegate example service")
    parser.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8080)")
    parser.add_argument("--host", default=None, help="address (default: $HOST or 127.0.0.1)")
    parser.add_argument(
        "--version-label", default=None, help="version (default: $WAKEGATE_VERSION or dev)"
    )
    args = parser.parse_args(argv)

    port = args.port if args.port is not None else _env_int("PORT")
    if port is None:
        port = 8080
    host = args.host or os.environ.get("HOST") or "127.0.0.1"
    version = args.version_label or os.environ.get("WAKEGATE_VERSION") or "dev"
    service = os.environ.get("SERVICE_NAME") or "hello"
    delay_ms = _env_int("HELLO_STARTUP_DELAY_MS") or 0
    ready_after_ms = _env_int("HELLO_READY_AFTER_MS") or 0

    coro = serve(host, port, service, version, delay_ms, ready_after_ms)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()

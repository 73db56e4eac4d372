"""Attacks on the llhttp fast path (proxy/fastpath.py, exchange.py, upstreams.py), and the
aiohttp path it must agree with: each test is one finding of a review, over real HTTP.

Two real `wakegate up` (tests/both_paths.py: fast path on and off), started once for the
module, each with two always-on public services: `raw` (tests/upstreams/raw_http.py) and
`odd`, a service written below (ODD_SERVICE) that answers at the byte level the way a
buggy or hostile service does: a 1xx answer with a body, a reason phrase with control
bytes, a body sent after the head of an answer to HEAD, an answer with many fields.

What each test asserts is what both paths should do; where they differ today, the
docstring says which one is wrong and why.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .both_paths import PATHS, both_paths, raw_service
from .conftest import Wakegate
from .raw_client import IO_DEADLINE, Conn, connection, exchange, request

ENV = "staging"
RAW = f"raw.{ENV}.localhost"
ODD = f"odd.{ENV}.localhost"
LATE = 0.2  # seconds the odd service waits before the bytes it sends late
AIOHTTP_MAX_FIELDS = 128  # aiohttp's parser: max_headers (431 past it, on the aiohttp path)

# A service that misbehaves at the byte level, one way per path. Every answer keeps the
# connection alive (Content-Length), so that a proxy pools it.
ODD_SERVICE = r'''
import asyncio, sys

FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: yes\r\n\r\nforged"


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target = head.split(b" ", 2)[:2]
            path = target.split(b"?", 1)[0]
            if path == b"/informational-body":
                # A 1xx answer with a body (llhttp reads the body of a 1xx other than
                # 100-103 by its Content-Length), then the real answer.
                writer.write(b"HTTP/1.1 199 Odd\r\nContent-Length: 6\r\n\r\nforged"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif path == b"/control-reason":
                writer.write(b"HTTP/1.1 200 OK\x01\x1b[2J\r\nContent-Length: 2\r\n\r\nok")
            elif path == b"/late-body":
                # `do_HEAD = do_GET`: the body goes out after the head, also to HEAD,
                # in a write of its own. The body is content a user controls: here, an
                # answer of its own.
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FORGED))
                await writer.drain()
                await asyncio.sleep(float(sys.argv[2]))
                writer.write(FORGED)
            elif path == b"/many-fields":
                fields = b"".join(b"X-F%d: v\r\n" % i for i in range(200))
                writer.write(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
'''


def attacks_config(odd_script: Path) -> dict[str, Any]:
    return {
        "environments": {ENV: {"min_replicas": 1, "max_replicas": 1}},
        "services": {
            "raw": raw_service(ENV),
            "odd": {
                "command": f"{{python}} {odd_script} {{port}} {LATE}",
                "readiness": {"tcp": True},
                "environments": [ENV],
                "stop_grace": "1s",
            },
        },
        "proxy": {"read_timeout": "2s", "connect_timeout": "2s", "header_timeout": "2s"},
    }


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wakegate]]:
    tmp = tmp_path_factory.mktemp("attacks")
    script = tmp / "odd_service.py"
    script.write_text(ODD_SERVICE)
    assert sys.executable  # the service runs under {python}, as raw_http does
    with both_paths(tmp, attacks_config(script), (ENV, "raw"), (ENV, "odd")) as wgs:
        yield wgs


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def no_tracebacks(wg: Wakegate, since: int = 0) -> None:
    """No traceback in wakegate's stderr after its first `since` characters."""
    err = wg.stderr()[since:]
    for needle in ("Traceback", "Fatal error", "Exception in callback", "Unhandled exception"):
        assert needle not in err, f"{needle} in wakegate's stderr:\n{err[-3000:]}"


async def read_for(conn: Conn, seconds: float) -> bytes:
    """Everything the connection gets within `seconds` (or until it is closed)."""
    got = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            piece = await asyncio.wait_for(conn.reader.read(65536), left)
        except (TimeoutError, ConnectionResetError):
            break
        if not piece:
            break
        got += piece
    return bytes(got)


# --- client input --------------------------------------------------------------------


@pytest.mark.parametrize("extra", [AIOHTTP_MAX_FIELDS, 300])
async def test_a_request_with_more_fields_than_the_limit_gets_the_same_answer_on_both_paths(
    gates: dict[str, Wakegate], extra: int,
) -> None:
    """llhttp has no limit on the number of header fields; aiohttp's parser refuses more
    than 128 (431). The fast path admits a head of up to max_header_size whatever its
    number of fields, so it forwards requests of hundreds of fields that the aiohttp path
    refuses: the two paths disagree on the status class (issue 12: "where llhttp is
    lenient by default and the aiohttp path is strict, make both strict the same way").
    Found: fast 200, aiohttp 431. Fix: in FastConnection._admit, hand over a head with
    more than aiohttp's max_headers fields (or pass one limit, from ProxySettings, to
    both parsers)."""
    headers = tuple((f"X-F{i}", "v") for i in range(extra))  # + Host: one over aiohttp's
    statuses = {}
    for name, wg in gates.items():
        resp = await exchange(wg, request("GET", "/echo", host=RAW, headers=headers))
        statuses[name] = resp.status
    assert statuses["aiohttp"] == 431, statuses
    assert statuses["fast"] == statuses["aiohttp"], statuses


# --- what a service sends back ----------------------------------------------------------


async def test_the_body_of_an_informational_answer_never_reaches_the_client(
    gates: dict[str, Wakegate], path: str,
) -> None:
    """A 1xx answer (other than 100-103) with a Content-Length has a body to llhttp.
    UpstreamConnection.on_body hands it to the exchange while _informational is set, and
    Exchange.response_body queues it: the client gets `forged` before any status line,
    which a client (or a proxy in front of wakegate, with its keep-alive connection
    shared by many users) reads as the start of the answer - or, were the body a whole
    answer, as an extra one: response queue poisoning. The aiohttp path answers 200 ok.
    Fix: in UpstreamConnection.on_body, a body while _informational is an invalid answer
    (self._overrun = True; owner.response_invalid()), or drop it."""
    wg = gates[path]
    since = len(wg.stderr())
    async with connection(wg) as conn:
        await conn.send(request("GET", "/informational-body", host=ODD))
        got = await read_for(conn, 0.5)
    assert re.match(rb"HTTP/1\.1 (200|502) ", got), f"{path}: the answer starts {got[:40]!r}"
    assert b"forged" not in got, (path, got)
    no_tracebacks(wg, since)


async def test_a_reason_phrase_with_control_bytes_is_not_passed_on_nor_a_crash(
    gates: dict[str, Wakegate], path: str,
) -> None:
    """`HTTP/1.1 200 OK\\x01\\x1b[2J`: llhttp and aiohttp's client take control bytes in the
    reason phrase. The fast path writes it to the client as it came (a NUL, ESC or DEL in
    a status line: terminal escapes in logs, and a head other proxies refuse); the
    aiohttp path passes it to web.StreamResponse(reason=...), whose header writer raises
    ValueError("Forbidden control character"): a traceback in wakegate's log
    (aiohttp.server: Unhandled exception) and the client gets no answer at all, the
    connection closed. Fix, one rule in policy.py for both paths: a reason phrase that
    is not HTAB / SP / VCHAR / obs-text is replaced by the status code's standard phrase
    (HTTPStatus(status).phrase, or none)."""
    wg = gates[path]
    since = len(wg.stderr())
    conn = await Conn.open(wg)
    try:
        await conn.send(request("GET", "/control-reason", host=ODD))
        raw = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), IO_DEADLINE)
    except asyncio.IncompleteReadError as exc:
        raise AssertionError(f"{path}: no answer, the connection closed: {exc.partial!r}"
                             ) from None
    finally:
        conn.close()
    status_line = raw.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 200"), (path, status_line)
    assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", status_line), (path, status_line)
    no_tracebacks(wg, since)


async def test_a_body_sent_late_after_an_answer_to_head_never_answers_another_client(
    gates: dict[str, Wakegate], path: str,
) -> None:
    """A service that sends a body to HEAD too (`do_HEAD = do_GET`, common in small
    services), in a write of its own after the head. The fast path ends the exchange at
    the head (Exchange.response_head: end_answer), gives the connection back to the pool
    with a fresh parser (next_answer(fresh_parser=True)) and - the pool is LIFO - the
    next request to that service, from any client, takes it: the late body, here bytes a
    user of the service controls (an uploaded file), is read as that other client's
    answer. Found on both paths (aiohttp's client pools the connection the same way).
    Fix for the fast path: after an answer to HEAD that announces a body (Content-Length
    > 0, or chunked), do not give the upstream connection back (close it: HEAD is rare).
    An answer followed by bytes in a later write in general cannot be told from a next
    answer, but this case, the common one, can."""
    wg = gates[path]
    since = len(wg.stderr())
    attacker, victim = await Conn.open(wg), await Conn.open(wg)
    try:
        await attacker.send(request("HEAD", "/late-body", host=ODD))
        head = await attacker.response(head_only=True)
        assert head.status == 200, (path, head)
        await victim.send(request("GET", "/victim", host=ODD))
        resp = await victim.response()
        assert resp.header("X-Forged") is None, (path, resp)
        assert (resp.status, resp.body) == (200, b"ok"), (path, resp)
    finally:
        attacker.close()
        victim.close()
    await asyncio.sleep(LATE * 2)  # the late bytes, on whatever connection they went
    resp = await exchange(wg, request("GET", "/after", host=ODD))
    assert (resp.status, resp.body) == (200, b"ok"), (path, resp)
    no_tracebacks(wg, since)

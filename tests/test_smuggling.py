"""Request smuggling: a corpus of framing attacks, on both proxy paths.

Each case is one request whose body or framing carries a second, smuggled request,
`GET /smuggled-<case>` with the Host of another service. Whatever a path makes of the
framing - refuses it, or forwards the body as a body - the smuggled request must never
become a request of its own: not at wakegate (which would route it to the other
service by its Host), nor at the upstream (which would read it from the bytes wakegate
forwarded on its keep-alive connection). Every case is built so that a strict reading
of RFC 9112 (and every leniency it allows) keeps the smuggled bytes inside the first
request or after one that ends the connection; only a misreading frees them.

The corpus: CL.TE and TE.CL, with the Transfer-Encoding plain and obfuscated
(`xchunked`, leading whitespace, `chunked, identity`, whitespace before the colon,
`Transfer_Encoding`, upper case, two fields, obs-fold, NUL, bare LF or CR before it);
duplicate Content-Length (equal and different), `+N`, `-1`, `0xN`, huge, NUL, folded;
bare LF and bare CR line ends; obs-fold in Host and Connection; chunk-size tricks (`0x`,
`N ;ext`, quoted extensions, over-long and overflowing hex, `-1`, leading spaces, no
CRLF after the data, bare LF); NUL in a field value; Content-Length and
Transfer-Encoding named in Connection; two spaces in the request line; HTTP/1.0 with
keep-alive.

Two real `wakegate up` (tests/both_paths.py: fast path on and off), started once for
the module, each with two always-on public services running tests/upstreams/
raw_http.py: `raw` (the attacked route) and `raw2` (the smuggled request's). For each
case and path:

- the attack is sent in one write; if its answer keeps the connection, a well-formed
  probe (`GET /probe-<case>/echo`, `Connection: close`) follows; every answer is read
  to the close. The client never gets more answers than the well-formed requests it
  sent, and the probe's answer is its own (nothing got in between);
- then, on clean connections, `/seen?path=/smuggled-<case>` on raw2 and on raw: 0;
- nothing in wakegate's stderr is a traceback.

And each case gets the same answers (statuses, in order) on both paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .both_paths import PATHS, both_paths, raw_service
from .conftest import Wakegate
from .raw_client import IO_DEADLINE, exchange, request

ENV = "staging"
FRONT = "raw.staging.localhost"  # the route attacked
OTHER = "raw2.staging.localhost"  # the route the smuggled request names
TARGET = "/attack/echo"  # raw_http echoes what it received at .../echo


def smuggling_config() -> dict[str, Any]:
    return {
        "environments": {ENV: {"min_replicas": 1, "max_replicas": 1}},
        "services": {"raw": raw_service(ENV), "raw2": raw_service(ENV)},
        "proxy": {"header_timeout": "2s", "read_timeout": "2s", "connect_timeout": "2s"},
    }


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wakegate]]:
    with both_paths(tmp_path_factory.mktemp("smuggling"), smuggling_config(),
                    (ENV, "raw"), (ENV, "raw2")) as wgs:
        yield wgs


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- the corpus -------------------------------------------------------------------------


def head(*fields: str, line: str = f"POST {TARGET} HTTP/1.1", host: str | None = FRONT
         ) -> bytes:
    """A request head: the line, Host (unless None), `fields` as written (with whatever
    line ends they hold inside), and the empty line."""
    lines = [line, *([f"Host: {host}"] if host is not None else []), *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def cl_te(*te: str, line: str = f"POST {TARGET} HTTP/1.1") -> Callable[[bytes], bytes]:
    """CL.TE: the Content-Length covers everything; read as chunked, the body ends at the
    last chunk and the smuggled request follows."""
    def build(smuggled: bytes) -> bytes:
        body = b"0\r\n\r\n" + smuggled
        return head(*te, f"Content-Length: {len(body)}", line=line) + body
    return build


def te_cl(*te: str) -> Callable[[bytes], bytes]:
    """TE.CL: read as chunked, the smuggled request is a chunk's data; read by the
    Content-Length, the body is the chunk-size line and the smuggled request follows."""
    def build(smuggled: bytes) -> bytes:
        size = b"%x\r\n" % len(smuggled)
        return head(*te, f"Content-Length: {len(size)}") + size + smuggled + b"\r\n0\r\n\r\n"
    return build


def with_length(*fields: str, line: str = f"POST {TARGET} HTTP/1.1", host: str | None = FRONT,
                value: str = "{n}", before: bytes = b"") -> Callable[[bytes], bytes]:
    """The smuggled request as the body (after `before`), its Content-Length written as
    `value` ({n}: the body's length); `fields` come first."""
    def build(smuggled: bytes) -> bytes:
        body = before + smuggled
        length = value.format(n=len(body), h=f"{len(body):x}")
        return head(*fields, f"Content-Length: {length}", line=line, host=host) + body
    return build


def chunked(body: Callable[[bytes], bytes], *fields: str) -> Callable[[bytes], bytes]:
    """A chunked request whose body `body(smuggled)` writes (the chunk-size tricks)."""
    def build(smuggled: bytes) -> bytes:
        return head("Transfer-Encoding: chunked", *fields) + body(smuggled)
    return build


TE_VARIANTS: dict[str, tuple[str, ...]] = {
    "plain": ("Transfer-Encoding: chunked",),
    "xchunked": ("Transfer-Encoding: xchunked",),
    "space-before-value": ("Transfer-Encoding:  chunked",),
    "tab-before-value": ("Transfer-Encoding:\tchunked",),
    "chunked-identity": ("Transfer-Encoding: chunked, identity",),
    "tab-before-colon": ("Transfer-Encoding\t: chunked",),
    "space-before-colon": ("Transfer-Encoding : chunked",),
    "upper-case": ("TRANSFER-ENCODING: CHUNKED",),
    "two-fields": ("Transfer-Encoding: chunked", "Transfer-Encoding: identity"),
    "two-fields-reversed": ("Transfer-Encoding: identity", "Transfer-Encoding: chunked"),
    "obs-fold": ("Transfer-Encoding:\r\n chunked",),
    "folded-into-another": ("X-Folded: a\r\n Transfer-Encoding: chunked",),
    "nul-after": ("Transfer-Encoding: chunked\x00",),
    "bare-lf-before": ("X-Before: a\nTransfer-Encoding: chunked",),
    "bare-cr-before": ("X-Before: a\rTransfer-Encoding: chunked",),
    "vertical-tab": ("Transfer-Encoding:\x0bchunked",),
}

CASES: dict[str, Callable[[bytes], bytes]] = {
    **{f"cl-te-{name}": cl_te(*te) for name, te in TE_VARIANTS.items()},
    # TE.CL only where no reading the RFC allows loses the Transfer-Encoding: where one
    # does (an obs-fold or a bare CR replaced by a space makes it part of the field
    # before), the Content-Length rightly frames the body and what follows is a request.
    **{f"te-cl-{name}": te_cl(*te) for name, te in TE_VARIANTS.items()
       if name not in ("folded-into-another", "bare-cr-before")},
    # Not a Transfer-Encoding at all (a CGI server would think it is): the length rules.
    "cl-te-underscore": cl_te("Transfer_Encoding: chunked"),
    # Content-Length.
    "cl-twice-equal": lambda s: head(*[f"Content-Length: {len(s)}"] * 2) + s,
    "cl-twice-0-then-n": with_length("Content-Length: 0"),
    "cl-twice-n-then-0": lambda s: head(f"Content-Length: {len(s)}", "Content-Length: 0") + s,
    "cl-list-0-n": with_length(value="0, {n}"),
    "cl-list-n-n": with_length(value="{n}, {n}"),
    "cl-plus": with_length(value="+{n}"),
    "cl-minus-one": with_length(value="-1"),
    "cl-hex": with_length(value="0x{h}"),
    "cl-huge": with_length(value="9" * 30),
    "cl-nul": with_length(value="5\x00{n}", before=b"hello"),
    "cl-obs-fold": with_length(value="\r\n {n}"),
    "cl-named-in-connection": with_length("Connection: Content-Length"),
    "cl-named-in-folded-connection": with_length("Connection: keep-alive,\r\n Content-Length"),
    "te-named-in-connection": chunked(lambda s: b"%x\r\n%s\r\n0\r\n\r\n" % (len(s), s),
                                      "Connection: Transfer-Encoding"),
    # Line ends.
    "bare-lf-everywhere": lambda s: (f"POST {TARGET} HTTP/1.1\nHost: {FRONT}\n"
                                     f"Content-Length: {len(s)}\n\n").encode() + s,
    "bare-lf-ends-the-head": lambda s: head(f"Content-Length: {len(s)}")[:-2] + b"\n" + s,
    "bare-cr-ends-the-head": lambda s: head(f"Content-Length: {len(s)}")[:-2] + b"\r" + s,
    # obs-fold elsewhere.
    "host-obs-fold": with_length(f"Host:\r\n {FRONT}", host=None),
    "host-folded-with-another": with_length(f"Host: {FRONT}\r\n\t{OTHER}", host=None),
    # Chunk sizes and extensions.
    "chunk-size-0x": chunked(lambda s: b"0x%x\r\n\r\n" % len(s) + s),
    "chunk-ext-after-space": chunked(lambda s: b"%x ;ext\r\n%s\r\n0\r\n\r\n" % (len(s), s)),
    "chunk-ext-quoted": chunked(lambda s: b'%x;q="a;b\\"c"\r\n%s\r\n0\r\n\r\n' % (len(s), s)),
    "chunk-ext-quote-over-the-line": chunked(lambda s: b'0;q="\r\n\r\n' + s + b'"\r\n\r\n'),
    "chunk-size-overflowing": chunked(lambda s: b"1" + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n"
                                      + s),
    "chunk-size-long-zeros": chunked(lambda s: b"0" * 40 + b"%x\r\n%s\r\n0\r\n\r\n"
                                     % (len(s), s)),
    "chunk-size-minus-one": chunked(lambda s: b"-1\r\nhello\r\n0\r\n\r\n" + s),
    "chunk-size-leading-space": chunked(lambda s: b" 5\r\nhello\r\n0\r\n\r\n" + s),
    "chunk-data-without-crlf": chunked(lambda s: b"5\r\nhello0\r\n\r\n" + s),
    "chunk-lines-bare-lf": chunked(lambda s: b"%x\n%s\n0\n\n" % (len(s), s)),
    # NUL in a field value.
    "nul-in-a-value": with_length("X-Custom: a\x00b"),
    # The request line.
    "two-spaces-before-target": with_length(line=f"POST  {TARGET} HTTP/1.1"),
    "two-spaces-before-version": with_length(line=f"POST {TARGET}  HTTP/1.1"),
    # HTTP/1.0 asking for keep-alive: its length frames the body; a Transfer-Encoding in
    # an HTTP/1.0 request is faulty framing (RFC 9112 6.1: close after it).
    "http10-keep-alive": with_length("Connection: keep-alive",
                                     line=f"POST {TARGET} HTTP/1.0"),
    "http10-keep-alive-cl-te": cl_te("Connection: keep-alive", "Transfer-Encoding: chunked",
                                     line=f"POST {TARGET} HTTP/1.0"),
    "http10-keep-alive-te": lambda s: head("Connection: keep-alive", "Transfer-Encoding: chunked",
                                           line=f"POST {TARGET} HTTP/1.0") + b"0\r\n\r\n" + s,
}


def smuggled_path(case: str) -> str:
    return f"/smuggled-{case}"


def attack_bytes(case: str) -> bytes:
    smuggled = f"GET {smuggled_path(case)} HTTP/1.1\r\nHost: {OTHER}\r\n\r\n".encode()
    return CASES[case](smuggled)


def probe(case: str) -> bytes:
    return request("GET", f"/probe-{case}/echo", FRONT, (("Connection", "close"),))


# --- the client ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    head: bytes
    body: bytes
    closing: bool  # it says the connection ends after it

    def json(self) -> Any:
        return json.loads(self.body)


class _Wire(asyncio.Protocol):
    """The bytes of one client connection, as they come, and whether it ended. (Not a
    StreamReader: after a reset it would drop the bytes that came before.)"""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.changed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.closed = True
        self.changed.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.changed.set()

    async def answer(self, what: str) -> Answer | None:
        """The next whole answer, or None if the connection ended first (bytes that are
        not a whole answer then fail the test)."""
        while True:
            got = _take_answer(self.data)
            if got is not None:
                return got
            if self.closed:
                assert not self.data, f"{what}: not a whole answer: {bytes(self.data)!r}"
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), IO_DEADLINE)
            except TimeoutError:
                raise AssertionError(f"{what}: no answer and no close within {IO_DEADLINE}s;"
                                     f" so far {bytes(self.data)!r}") from None


def _take_answer(data: bytearray) -> Answer | None:
    """Remove the first whole answer from `data` (every answer here has a Content-Length
    and is to a method other than HEAD), or None if it is not all there yet."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head_bytes = bytes(data[:end])
    lines = head_bytes.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in
              (line.partition(":") for line in lines[1:])}
    length = int(fields.get("content-length", "0"))
    if len(data) < end + 4 + length:
        return None
    body = bytes(data[end + 4:end + 4 + length])
    del data[:end + 4 + length]
    connection = fields.get("connection", "").lower()
    closing = "close" in connection or (lines[0].startswith("HTTP/1.0 ")
                                        and "keep-alive" not in connection)
    return Answer(int(lines[0].split(" ")[1]), head_bytes, body, closing)


@dataclass
class Outcome:
    answers: list[Answer] = field(default_factory=list)
    sent: int = 1  # well-formed requests sent: the attack, and the probe if it went

    def statuses(self) -> list[int]:
        return [a.status for a in self.answers]


async def attack(wg: Wakegate, case: str) -> Outcome:
    """Send the case; if its answer keeps the connection, the probe; read to the close."""
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(_Wire, "127.0.0.1", wg.proxy_port)
    assert wire.transport is not None
    outcome = Outcome()
    try:
        wire.transport.write(attack_bytes(case))
        first = await wire.answer(f"{case}: the attack")
        if first is None:
            return outcome
        outcome.answers.append(first)
        if not first.closing:
            wire.transport.write(probe(case))
            outcome.sent += 1
        while (more := await wire.answer(f"{case}: after the first answer")) is not None:
            outcome.answers.append(more)
    finally:
        wire.transport.abort()
    return outcome


async def seen(wg: Wakegate, host: str, path: str) -> int:
    resp = await exchange(wg, request("GET", f"/seen?path={path}", host))
    assert resp.status == 200, resp
    return int(resp.json()["count"])


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
async def test_a_smuggled_request_never_reaches_a_route(
    gates: dict[str, Wakegate], path: str, case: str,
) -> None:
    wg = gates[path]
    errors_before = len(wg.stderr())
    outcome = await attack(wg, case)
    answers = [(a.status, a.head.split(b"\r\n", 1)[0], a.body[:200]) for a in outcome.answers]
    assert len(outcome.answers) <= outcome.sent, (
        f"{path}: {len(outcome.answers)} answers to {outcome.sent} well-formed requests "
        f"{attack_bytes(case)!r}: {answers}")
    if outcome.sent == 2:
        # The probe's answer is the last, and its own.
        last = outcome.answers[-1]
        assert last.status == 200 and last.json()["target"] == f"/probe-{case}/echo", \
            (path, answers)
    if outcome.answers and outcome.answers[0].status == 200:
        # Forwarded: the smuggled bytes went as a body (raw_http echoes what it read).
        got = outcome.answers[0].json()
        assert got["target"] == TARGET, (path, got)
    for host in (OTHER, FRONT):
        count = await seen(wg, host, smuggled_path(case))
        assert count == 0, (
            f"{path}: {smuggled_path(case)} reached {host}'s service {count} time(s) from "
            f"{attack_bytes(case)!r}; the client got {answers}")
    errors = wg.stderr()[errors_before:]
    assert "Traceback" not in errors and "error handling request" not in errors, errors[-3000:]


@pytest.mark.parametrize("case", CASES)
async def test_each_case_gets_the_same_answers_on_both_paths(
    gates: dict[str, Wakegate], case: str,
) -> None:
    outcomes = {name: await attack(wg, case) for name, wg in gates.items()}
    statuses = {name: outcome.statuses() for name, outcome in outcomes.items()}
    assert statuses["fast"] == statuses["aiohttp"], (
        f"{attack_bytes(case)!r}: {statuses}; first answers: "
        + "; ".join(f"{name}: {o.answers[0].head!r} {o.answers[0].body[:120]!r}"
                    for name, o in outcomes.items() if o.answers))

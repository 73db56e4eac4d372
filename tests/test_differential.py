"""The fast path and the aiohttp path, fed the same random and mutated request bytes.

Issue 12: whatever bytes a client sends, both proxy paths must take the same
routing decision, answer with the same status, and send the same bytes
upstream. Hypothesis builds HTTP/1.1 requests from valid parts (methods,
origin-form targets with odd bytes, Host variants, Content-Length and
Transfer-Encoding variants, Connection tokens, X-Forwarded-* claims, wakegate
credentials, bodies), then mutates their bytes (flip, insert, delete, duplicate
a line, bare LF, obs-fold, space before the colon, NUL, tab, case). Each one is
sent over a raw loopback socket to two real `wakegate up` processes started
once for the module from one config (tests/both_paths.py): one
with the fast path, one with WAKEGATE_FAST_PATH=0.

Three routes, each served by tests/upstreams/recorder.py, which answers every
request with the exact bytes it received and the instance it is:
`rec.staging.localhost` and `other.staging.localhost` (public, always on) and
`rec.private.localhost` (api_key access, kept ready: min_replicas 1); plus a
host no route has. The private route's key differs between the two wakegates
(each made its own): requests carry the placeholder @KEY@, replaced by the
key of the wakegate they are sent to, and put back in what the upstream
received before the two are compared.

How an exchange ends, without waiting on a timer: a request is followed, in the
same write, by SENTINEL, a well-formed `OPTIONS *` with `Connection: close` that
wakegate answers itself. A request framed as it says is answered, then the
sentinel, and the connection closes; a request whose framing takes in the
sentinel (a Content-Length longer than its body) takes its bytes, identically on
both paths. A request that asks for the close itself (any `close`, or HTTP/1.0)
gets no sentinel: aiohttp's parser answers 400 to anything after such a request
(see test_bytes_after_connection_close_are_never_forwarded). Reading stops at the close, or at a
whole answer that says the connection closes after it. Requests that declare a
body they do not hold (even with the sentinel) are not tried: neither path has a
timeout for a request body that stops coming (see body_never_ends).

Compared, for every answer, in order: the status (exactly: no difference is
tolerated; the two the paths keep on purpose, junk or a request after a complete
request in one read, have tests of their own below, and examples that would
produce them are not tried), the routing decision (which instance answered, or
the JSON error code and the route it names), any 1xx before it, and for an answer from an upstream,
what that upstream received: the request line, the header fields in order, the
body. Only the differences listed in NORMALISATIONS below, which come from how the
aiohttp path parses and writes a request (aiohttp's server parser and HTTP
client), are undone before comparing; nothing else is.

Besides the random examples, EDGES are tried every run: one request per route,
and each difference the random examples found, by name.

Reproducible: a fixed seed (derandomize) and no example database, so every run
(and CI) tries the same examples; MAX_EXAMPLES bounds the time (about 3 s for
300 on a 2-core machine, plus 2 s to start the two wakegates).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from .both_paths import UPSTREAMS, both_paths, upstream_service
from .conftest import Wakegate
from .raw_client import AnswerReader

RECORDER = UPSTREAMS / "recorder.py"
PUBLIC = "rec.staging.localhost"
OTHER = "other.staging.localhost"
PRIVATE = "rec.private.localhost"
UNROUTED = "gone.staging.localhost"
HOSTS = (PUBLIC, OTHER, PRIVATE, UNROUTED)
KEY = b"@KEY@"  # the private route's key, per wakegate
WRONG_KEY = "wg_" + "Q" * 43
MAX_BODY = 4096  # proxy.max_body_size
TRUSTED = "127.0.0.1"  # in trusted_proxies: its X-Forwarded-* claims are kept
UNTRUSTED = "127.0.0.2"  # also loopback, not trusted: its claims are dropped
SENTINEL = f"OPTIONS * HTTP/1.1\r\nHost: {PUBLIC}\r\nConnection: close\r\n\r\n".encode()
EXCHANGE_DEADLINE = 10.0  # one request and the sentinel, answered and closed
MAX_EXAMPLES = 300


def recorder(*environments: str) -> dict[str, Any]:
    return upstream_service(RECORDER, *environments)


def differential_config() -> dict[str, Any]:
    return {
        "environments": {"staging": {"min_replicas": 1, "max_replicas": 1},
                         "private": {"min_replicas": 1, "max_replicas": 1}},
        "services": {"rec": recorder("staging", "private"), "other": recorder("staging")},
        "proxy": {
            "max_body_size": MAX_BODY,
            # A request whose framing waits for bytes that never come is ended by these.
            "header_timeout": "1s",
            "read_timeout": "2s",
            "keepalive_timeout": "1s",
            "trusted_proxies": [f"{TRUSTED}/32"],
        },
    }


@dataclass
class Gate:
    wg: Wakegate
    key: bytes  # its key for rec in private


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gate]]:
    with both_paths(tmp_path_factory.mktemp("differential"), differential_config(),
                    ("staging", "rec"), ("staging", "other"), ("private", "rec")) as wgs:
        yield {name: Gate(wg, wg.new_keys()["private/rec"].encode())
               for name, wg in wgs.items()}


# --- requests: valid parts, then odd parts, then mutated bytes ------------------------
#
# Each example is one of three kinds, so that about half are requests a client really
# sends (most of them served by the fast path, the rest handed over or refused) and
# the rest probe the edges: "valid" (well-formed, HTTP/1.1, framed right), "odd"
# (well-formed bytes, odd parts: methods, versions, Host and framing variants) and
# "mutated" (valid or odd, then one to three byte-level mutations).

METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
ODD_METHODS = (b"get", b"FOO", b"TRACE", b"CONNECT", b"PRI", b"G\xc9T", b"M-SEARCH")
ODD_VERSIONS = (b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/01.1")
# Path segments and queries: plain ones, and odd bytes, one at most per target (what
# each path does with them - refuse, pass on, hand over - must be the same).
PLAIN_PIECES = ("a", "b", "echo", "x.y", "v1", "index.html", "?q=1", "?a=1&b=2", ";p=1", "~u",
                "..", ".", "-_", "%41")
ODD_PIECES = ("%2e", "%2F", "%00", "%", "%zz", "!$&'()*+,", "@", ":", "=", "\"", "<>", "{}",
              "|", "^", "`", "\\", "#frag", "?", "&", "\u00e9", "\x7f", "\x00", " ", "\t",
              "/", "?\\x", "a?b?c")
SAFE = "".join(chr(c) for c in range(0x21, 0x7f))
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@st.composite
def targets(draw: st.DrawFn, odd: bool) -> bytes:
    pieces = draw(st.lists(st.sampled_from(PLAIN_PIECES), max_size=4))
    kind = draw(st.sampled_from(("odd piece", "slashes", "absolute", "star"))) if odd else ""
    if kind == "odd piece":
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(ODD_PIECES)))
    path = "/" + "/".join(pieces)
    if kind == "slashes":
        path = draw(st.sampled_from(("//", "/\\", "///"))) + path.lstrip("/")
    elif kind == "absolute":
        host = draw(st.sampled_from((PUBLIC, OTHER, "127.0.0.1:1")))
        path = f"{draw(st.sampled_from(('http', 'HTTP', 'https', 'ws')))}://{host}{path}"
    elif kind == "star":
        path = "*"
    return path.encode("utf-8")


def header_values() -> st.SearchStrategy[bytes]:
    """Values with odd bytes, tabs and spaces inside."""
    return st.one_of(
        st.sampled_from((b"", b"x", b"a b", b"a\tb", b"\xe9t\xe9", b"v, w", b"\"q\"")),
        st.text(alphabet=SAFE + " \t", max_size=12).map(str.encode),
    )


CONNECTION_TOKENS = ("close", "keep-alive", "X-Custom", "close, X-Custom", "Upgrade", "TE",
                     "Content-Length", "Transfer-Encoding", "Host", "keep-alive, Cookie",
                     "x-forwarded-for", "Authorization", "X-API-Key", "")
HEADERS: tuple[tuple[bytes, st.SearchStrategy[bytes]], ...] = (
    (b"User-Agent", st.sampled_from((b"curl/8.5", b"kube-probe/1.29", b"Mozilla/5.0 (X11)"))),
    (b"Accept", st.just(b"*/*")),
    (b"X-Custom", header_values()),
    (b"x-lower", header_values()),
    (b"Cookie", st.just(b"a=b; c=d")),
    (b"Content-Type", st.sampled_from((b"text/plain", b"application/json"))),
    (b"X-Forwarded-For", st.sampled_from((b"1.2.3.4", b"1.2.3.4, 5.6.7.8", b""))),
    (b"X-Forwarded-Proto", st.just(b"https")),
    (b"X-Forwarded-Host", st.just(b"evil.example")),
    (b"X-Real-IP", st.just(b"6.6.6.6")),
    (b"Forwarded", st.just(b"for=1.2.3.4;proto=https")),
    (b"X_Forwarded_For", st.just(b"6.6.6.6")),
    (b"X-Forwarded-Port", st.just(b"443")),
    (b"X-API-Key", st.sampled_from((KEY, WRONG_KEY.encode(), b""))),
    (b"Authorization", st.sampled_from((b"Bearer " + KEY, b"Bearer " + WRONG_KEY.encode(),
                                        b"bearer\t" + KEY, b"Bearer eyJhbGciOi.service",
                                        b"Basic dXNlcjpwYXNz"))),
    (b"Connection", st.sampled_from(CONNECTION_TOKENS).map(str.encode)),
    (b"Keep-Alive", st.just(b"timeout=5")),
    (b"TE", st.just(b"trailers")),
    (b"Upgrade", st.sampled_from((b"websocket", b"h2c"))),
    (b"Proxy-Connection", st.just(b"keep-alive")),
    (b"Proxy-Authorization", st.just(b"Basic eDp5")),
    (b"Trailer", st.just(b"X-T")),
    (b"Expect", st.sampled_from((b"100-continue", b"gold"))),
    (b"Via", st.just(b"1.1 somewhere")),
)


@st.composite
def host_lines(draw: st.DrawFn, odd: bool) -> list[bytes]:
    host = draw(st.sampled_from((PUBLIC, PUBLIC, OTHER, OTHER, PRIVATE, PRIVATE, UNROUTED)))
    if host == PRIVATE and draw(st.sampled_from((True, True, True, False))):
        key = [draw(st.sampled_from((b"X-API-Key: " + KEY, b"Authorization: Bearer " + KEY)))]
    else:
        key = []
    if not odd:
        return [b"Host: " + host.encode(), *key]
    variant = draw(st.sampled_from((
        "upper", "dot", "port", "spaces", "tab", "colon", "dots", "nbsp", "address", "empty",
        "name", "none", "two")))
    value = {"upper": host.upper(), "dot": host + ".", "port": host + ":8080",
             "spaces": f" {host} ", "tab": f"\t{host}", "colon": host + ":",
             "dots": host + "..", "nbsp": f"{host}\u00a0", "address": "127.0.0.1",
             "empty": ""}.get(variant, host).encode("utf-8")
    if variant == "none":
        return key
    if variant == "two":
        return [b"Host: " + value, b"Host: " + draw(st.sampled_from(HOSTS)).encode(), *key]
    name = draw(st.sampled_from((b"host", b"HOST", b"hOsT"))) if variant == "name" else b"Host"
    return [name + b": " + value, *key]


@st.composite
def framing_and_body(draw: st.DrawFn, odd: bool) -> tuple[list[bytes], bytes]:
    """(the framing header lines, the body bytes as sent)."""
    size = draw(st.sampled_from(("none",) * 3 + ("small",) * 6 + ("over the limit",)))
    body = b"" if size == "none" else b"x" * (MAX_BODY + 1) if size == "over the limit" else \
        draw(st.binary(min_size=1, max_size=24))
    if odd:
        kind = draw(st.sampled_from(("off", "odd length", "two lengths", "both", "coding",
                                     "odd chunks")))
    else:
        kind = draw(st.sampled_from(("none", "length", "length", "length", "chunked")))
    if kind == "none":
        return ([], b"") if body else ([], body)
    if kind == "length":
        return [b"Content-Length: %d" % len(body)], body
    if kind == "off":
        off = len(body) + draw(st.sampled_from((-1, 1, 3)))
        return [b"Content-Length: %d" % max(0, off)], body
    if kind == "odd length":
        form = draw(st.sampled_from((b"+%d", b"0%d", b" %d ", b"%d,%d", b"0x%x", b"%d.0",
                                     b"-%d", b"%d\t", b"1%d" + b"0" * 20)))
        return [b"Content-Length: " + form % ((len(body),) * form.count(b"%"))], body
    if kind == "two lengths":
        other = len(body) + draw(st.sampled_from((0, 0, 1)))
        return [b"Content-Length: %d" % len(body), b"Content-Length: %d" % other], body
    chunks = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
    if kind == "odd chunks" and chunks:
        size_line = draw(st.sampled_from((b"0x%x", b" %x", b"%x ", b"%x;a=1", b"%x;q=\"x;y\"",
                                          b"000000000000000000%x", b"-%x", b"%X")))
        chunks = size_line % len(body) + chunks[chunks.index(b"\r\n"):]
    chunks += b"0\r\n\r\n"
    coding = b"chunked"
    if kind in ("coding", "odd chunks"):
        coding = draw(st.sampled_from((b"Chunked", b"chunked, identity", b"gzip, chunked",
                                       b"identity", b" chunked", b"xchunked", b"chunked,")))
    lines = [b"Transfer-Encoding: " + coding]
    if kind == "both":
        lines.append(b"Content-Length: %d" % len(chunks))
    return lines, chunks


@st.composite
def well_formed(draw: st.DrawFn, odd: bool) -> bytes:
    """A request with well-formed bytes; with odd parts if `odd`."""
    part_odd = draw(st.lists(st.booleans(), min_size=4, max_size=4)) if odd else [False] * 4
    if odd and not any(part_odd):
        part_odd[draw(st.integers(0, 3))] = True
    method = draw(st.sampled_from(ODD_METHODS if part_odd[0] else METHODS))
    version = draw(st.sampled_from(ODD_VERSIONS)) if part_odd[1] else b"HTTP/1.1"
    lines = draw(host_lines(part_odd[2]))
    for name, values in draw(st.lists(st.sampled_from(HEADERS), max_size=4)):
        lines.append(name + b": " + draw(values))
    for name_text, value in draw(st.lists(st.tuples(st.text(TOKEN, min_size=1, max_size=8),
                                                    header_values()), max_size=1)):
        lines.append(name_text.encode() + b": " + value)  # a field of any name
    framing, body = draw(framing_and_body(part_odd[3]))
    lines[draw(st.integers(0, len(lines))):0] = framing
    line = method + b" " + draw(targets(part_odd[0] or part_odd[1])) + b" " + version
    return b"\r\n".join([line, *lines]) + b"\r\n\r\n" + body


INSERTED = (b"\x00", b"\r", b"\n", b" ", b"\t", b":", b",", b";", b"\x7f", b"\x80", b"\xff",
            b"a", b"0", b"\r\n", b"\r\n ", b"-", b"_", b"\x0b", b"\x0c")
MUTATIONS = ("flip", "insert", "delete", "duplicate", "bare lf", "all bare lf", "bare cr",
             "obs-fold", "space before colon", "nul", "tab", "upper", "lower")


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one to three byte-level mutations, in its head (as it was)."""
    for _ in range(draw(st.integers(1, 3))):
        end = data.find(b"\r\n\r\n")
        end = len(data) if end < 0 else end + 4
        head, rest = data[:end], data[end:]
        at = draw(st.integers(0, max(0, len(head) - 1)))
        lines = head.split(b"\r\n")
        # A header line (never the request line, nor the empty ones at the end).
        n = draw(st.integers(1, len(lines) - 3)) if len(lines) > 3 else 0
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "flip" and head:
            head = head[:at] + bytes([head[at] ^ draw(st.integers(1, 255))]) + head[at + 1:]
        elif kind == "insert":
            head = head[:at] + draw(st.sampled_from(INSERTED)) + head[at:]
        elif kind == "delete":
            head = head[:at] + head[at + 1:]
        elif kind in ("bare lf", "bare cr"):
            index = head.find(b"\r\n", at)
            if index >= 0:
                keep = 1 if kind == "bare lf" else 0
                head = head[:index] + head[index + 1 - keep:index + 1 + keep] + \
                    head[index + 2:]
        elif kind == "all bare lf":
            head = head.replace(b"\r\n", b"\n")
        elif kind == "tab":
            head = head.replace(b" ", b"\t", draw(st.integers(1, 2)))
        elif n:
            line = lines[n]
            if kind == "duplicate":
                lines.insert(n, line)
            elif kind == "obs-fold":
                name, sep, value = line.partition(b":")
                lines[n] = name + sep + draw(st.sampled_from((b"\r\n ", b"\r\n\t"))) + value
            elif kind == "space before colon":
                lines[n] = line.replace(b":", draw(st.sampled_from((b" :", b"\t:"))), 1)
            elif kind == "nul":
                lines[n] = line[:len(line) // 2] + b"\x00" + line[len(line) // 2:]
            elif kind == "upper":
                lines[n] = line.upper()
            elif kind == "lower":
                lines[n] = line.lower()
            head = b"\r\n".join(lines)
        data = head + rest
    return data


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """(a request's bytes, the loopback address it comes from)."""
    kind = draw(st.sampled_from(("valid",) * 6 + ("odd",) * 3 + ("mutated",) * 3))
    data = draw(well_formed(odd=kind == "odd" or (kind == "mutated" and draw(st.booleans()))))
    if kind == "mutated":
        data = draw(mutated(data))
    return data, draw(st.sampled_from((TRUSTED, UNTRUSTED)))


# --- one exchange, as both paths answer it --------------------------------------------


class _Collect(asyncio.Protocol):
    """Every byte the server sends, until it closes the connection (an abort too: what came
    before counts) or has sent a whole answer that says it will (`Connection: close`, or
    HTTP/1.0 without keep-alive): nothing may follow that, and an unread request body can
    keep aiohttp from closing for its lingering time (10 s)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if not self.ended.done():
            answers = parse_answers(bytes(self.data), closed=False)
            if answers and answers[-1].complete and answers[-1].closing:
                self.ended.set_result(None)

    def eof_received(self) -> bool:
        if not self.ended.done():
            self.ended.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


async def send_and_collect(wg: Wakegate, data: bytes, source: str) -> bytes:
    """Send `data` on a new connection from `source`; every byte answered, to the close."""
    loop = asyncio.get_running_loop()
    transport, collect = await loop.create_connection(
        _Collect, "127.0.0.1", wg.proxy_port, local_addr=(source, 0))
    try:
        transport.write(data)
        try:
            await asyncio.wait_for(asyncio.shield(collect.ended), EXCHANGE_DEADLINE)
        except TimeoutError:
            raise AssertionError(
                f"{wg.config_path.parent.name}: the connection was not closed within "
                f"{EXCHANGE_DEADLINE}s of {data!r}; answered so far: {bytes(collect.data)!r}"
            ) from None
    finally:
        transport.abort()
    return bytes(collect.data)


@dataclass
class Answer:
    status: int  # 0: not an answer (cut short, or not HTTP)
    decision: tuple[Any, ...]  # who answered: an instance, an error code, wakegate itself
    informational: list[int] = field(default_factory=list)
    upstream: dict[str, Any] | None = None  # what the recorder received
    raw: bytes = b""
    complete: bool = True
    closing: bool = False  # it says the connection ends after it

    def summary(self) -> tuple[Any, ...]:
        return self.status, self.decision, self.informational


def parse_answers(data: bytes, closed: bool = True) -> list[Answer]:
    """The answers in a connection's bytes, in order, read by h11 (neither path's parser);
    the last one may be cut short.

    Every body here is JSON or empty, so an answer whose head is followed by the next
    answer has none (HEAD, 204, 304), as has one followed by nothing once the connection
    is `closed` (before, its body may still be coming)."""
    answers: list[Answer] = []
    rest = data
    while rest:
        reading = AnswerReader()
        reading.feed(rest)
        if closed:
            reading.feed(b"")
        try:
            has_head = reading.head()
        except h11.RemoteProtocolError:
            has_head = False
        if not has_head:
            if not (reading.informational and not reading.unread()):  # not 1xx heads alone
                answers.append(Answer(0, ("not a whole answer head", rest[:300]), raw=rest,
                                      complete=False))
            break
        after = reading.unread()
        complete = True
        if not (after.startswith(b"HTTP/1.") or (closed and not after)):
            try:
                complete = reading.whole()
            except h11.RemoteProtocolError:
                complete = False  # closed before the body's end
            after = reading.unread() if complete else b""
        resp = reading.answer()
        fields = {name.lower(): value for name, value in resp.headers}
        body = resp.body
        if "x-recorded" in fields:  # the recorder's answer to HEAD
            body = base64.b64decode(fields["x-recorded"])
        answer = _answer(resp.status, body, resp.informational, rest[:len(rest) - len(after)])
        connection = fields.get("connection", "").lower()
        answer.complete = complete
        answer.closing = "close" in connection or (resp.version == "1.0"
                                                   and "keep-alive" not in connection)
        answers.append(answer)
        rest = after
    return answers


def _answer(status: int, body: bytes, informational: list[int], raw: bytes) -> Answer:
    try:
        got = json.loads(body) if body else None
    except ValueError:
        got = None
    if isinstance(got, dict) and "head" in got:
        return Answer(status, ("upstream", got["environment"], got["service"]),
                      informational, got, raw)
    if isinstance(got, dict) and "error" in got:
        return Answer(status, ("error", got["error"], got.get("environment"),
                               got.get("service")), informational, None, raw)
    return Answer(status, ("wakegate", body[:200]), informational, None, raw)


# --- what is allowed to differ upstream ----------------------------------------------
#
# NORMALISATIONS: what the aiohttp path's upstream request differs in by how aiohttp
# parses a request and how its HTTP client writes one, undone before the two are
# compared. Each keeps the request's meaning; nothing else is undone.
#
# 1. Whitespace around a field value. The fast path forwards a header line as the
#    client wrote it (`Name:   value  `, `Name:`); aiohttp's client writes every field
#    as `Name: value` from the parsed value. RFC 9110 5.5: optional whitespace is not
#    part of the value. Compared: values with spaces and tabs around them removed.
# 2. The spelling of field names. aiohttp's server parser gives the names it knows
#    (hdrs: Content-Length, Accept, User-Agent, Host, ...) in their canonical spelling,
#    which its client writes (`CONTENT-LENGTH: 0` arrives as `Content-Length: 0`); the
#    fast path passes the client's spelling. RFC 9110 5.1: names are case-insensitive.
#    Compared: names in lower case.
# 3. The place of Host. aiohttp's client writes it first, whatever its place in the
#    request (ClientRequest.update_headers); the fast path keeps it where the client
#    put it (after a Content-Length, say). Compared: the fast path's one Host field
#    moved to the front.
# 4. `Content-Length: 0` on a request without a body whose method is not GET, HEAD,
#    OPTIONS or TRACE (POST, PUT, PATCH, DELETE): aiohttp's client adds it as the last
#    field (ClientRequest.update_body_from_data); the fast path sends none. Dropped from
#    the aiohttp path's record when it is its last field, the fast path's record has no
#    Content-Length, and the body is empty (so one the client sent is never dropped).
#
# Not differences of the proxy, but of the test's two wakegates, and undone in both
# records: each made its own key for the private route (sent as @KEY@, put back as
# @KEY@ where it reached the upstream), and each runs its own replicas, on ports of
# their own (the replica's address, where it appears, becomes <upstream>: aiohttp's
# client writes it as the Host when the request's own Host was dropped).

_NO_AUTO_LENGTH = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))

Fields = list[tuple[str, str | None]]


def upstream_request(record: dict[str, Any], key: bytes) -> dict[str, Any]:
    """What the recorder received, as compared (1., 2., and the test's own differences)."""
    def mine(s: str) -> str:
        return s.replace(key.decode(), KEY.decode()).replace(record["address"], "<upstream>")

    lines = mine(record["head"]).split("\r\n")
    fields: Fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        fields.append((name.lower(), value.strip(" \t")) if sep else (line, None))
    return {"line": lines[0], "fields": fields, "body": mine(record["body"]),
            "problem": record["problem"]}


def normalise(fast: dict[str, Any], slow: dict[str, Any]) -> tuple[dict[str, Any],
                                                                    dict[str, Any]]:
    """Both records with the differences of NORMALISATIONS (3. and 4.) undone."""
    fast_fields: Fields = list(fast["fields"])
    hosts = [i for i, (name, _) in enumerate(fast_fields) if name == "host"]
    if len(hosts) == 1:  # 3.
        fast_fields.insert(0, fast_fields.pop(hosts[0]))
    slow_fields: Fields = list(slow["fields"])
    method = slow["line"].split(" ", 1)[0]
    if (slow_fields and slow_fields[-1] == ("content-length", "0")
            and method not in _NO_AUTO_LENGTH and not slow["body"]
            and not any(name == "content-length" for name, _ in fast_fields)):
        slow_fields.pop()  # 4.
    return {**fast, "fields": fast_fields}, {**slow, "fields": slow_fields}


def differences(fast: list[Answer], slow: list[Answer], fast_key: bytes,
                slow_key: bytes) -> list[str]:
    """How the two paths' answers differ, as sentences; [] if they do not."""
    if [a.summary() for a in fast] != [a.summary() for a in slow]:
        return ["the answers differ (status, decision, 1xx):\n"
                f"  fast:    {[a.summary() for a in fast]}\n"
                f"  aiohttp: {[a.summary() for a in slow]}\n"
                f"  fast's bytes:    {b''.join(a.raw for a in fast)!r}\n"
                f"  aiohttp's bytes: {b''.join(a.raw for a in slow)!r}"]
    found = []
    for i, (f, s) in enumerate(zip(fast, slow, strict=True)):
        if f.upstream is None or s.upstream is None:
            continue
        got_fast, got_slow = normalise(upstream_request(f.upstream, fast_key),
                                       upstream_request(s.upstream, slow_key))
        if got_fast != got_slow:
            found.append(f"answer {i}: the upstream received different requests:\n"
                         f"  fast:    {got_fast}\n  aiohttp: {got_slow}\n"
                         f"  as received, fast:    {f.upstream['head']!r}\n"
                         f"  as received, aiohttp: {s.upstream['head']!r}")
    return found


def with_sentinel(data: bytes) -> bytes:
    """`data` and the sentinel after it, unless `data` asks for the connection to close
    (any `close`, or HTTP/1.0): then the server closes it, and bytes after such a request
    are answered 400 by the aiohttp path (see test_bytes_after_connection_close below)."""
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    if b"close" in head or b"http/1.0" in head.split(b"\n", 1)[0]:
        return data
    return data + SENTINEL


def body_never_ends(data: bytes) -> bool:
    """Whether `data` (as sent, sentinel included) declares a body it does not hold all of,
    by a plain reading of its Content-Length (at most proxy.max_body_size: more is 413 at
    once) or its chunked framing. Neither path has a timeout for a request body that
    stops coming (read_timeout is the upstream's, header_timeout the head's): such an
    exchange lasts until the client or the upstream gives up, so it is not tried."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False  # an incomplete head: header_timeout answers it (408)
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        value = value.strip()
        if name.strip().lower() == b"content-length" and value.isdigit() and \
                len(body) < int(value) <= MAX_BODY:
            return True
    return b"chunked" in head.lower() and b"0\r\n\r\n" not in body


def swallows_sentinel(data: bytes) -> bool:
    """Whether `data`'s Content-Length (a plain reading) takes in bytes of the sentinel:
    what is left of it is then junk right after a request, in the same read, the one
    difference the paths keep (test_junk_after_a_request_in_the_same_read_is_never_
    forwarded): the fast path answers the request, aiohttp refuses the read."""
    head, sep, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\n")[1:] if sep else ():
        name, _, value = line.partition(b":")
        value = value.strip()
        if name.strip().lower() == b"content-length" and value.isdigit() and \
                len(body) < int(value):
            return True
    return False


async def both(gates: dict[str, Gate], data: bytes, source: str) -> dict[str, list[Answer]]:
    """What each path answered to `data` (with the sentinel), sent at the same time."""
    sent = [send_and_collect(gate.wg, with_sentinel(data).replace(KEY, gate.key), source)
            for gate in gates.values()]
    return {name: parse_answers(raw)
            for name, raw in zip(gates, await asyncio.gather(*sent), strict=True)}


def check(gates: dict[str, Gate], data: bytes, source: str) -> dict[str, list[Answer]]:
    answers = asyncio.run(both(gates, data, source))
    found = differences(answers["fast"], answers["aiohttp"], gates["fast"].key,
                        gates["aiohttp"].key)
    assert not found, f"request {data!r} from {source}:\n" + "\n".join(found)
    assert answers["fast"], f"request {data!r} from {source}: no answer at all"
    return answers


# --- the tests --------------------------------------------------------------------------


def _request(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_the_two_wakegates_take_different_paths(gates: dict[str, Gate]) -> None:
    """What the comparison relies on: a plain request is served by the fast path on one
    and by aiohttp on the other (whose server adds `Server`), through the recorder."""
    data = _request("GET /a?b=c HTTP/1.1", f"Host: {PUBLIC}")
    for name, answers in asyncio.run(both(gates, data, UNTRUSTED)).items():
        first = answers[0]
        assert first.decision == ("upstream", "staging", "rec"), (name, first)
        assert (b"\r\nServer:" in first.raw.split(b"\r\n\r\n")[0]) == (name == "aiohttp"), \
            (name, first.raw)
        assert answers[1].summary() == (200, ("wakegate", b""), []), answers  # the sentinel


# Requests tried every run, besides the random ones: each route, and each difference
# the random ones found (a failure here names a difference the proxy still has).
EDGES = {
    "public GET": (_request("GET /a?b=c HTTP/1.1", f"Host: {PUBLIC}"), TRUSTED),
    "other POST": (_request("POST /x HTTP/1.1", f"Host: {OTHER}", "Content-Length: 5",
                            body=b"hello"), UNTRUSTED),
    "private PUT with key": (_request("PUT /k HTTP/1.1", f"Host: {PRIVATE}",
                                      "X-API-Key: @KEY@", "Content-Length: 3", body=b"abc"),
                             TRUSTED),
    "private without key": (_request("GET /k HTTP/1.1", f"Host: {PRIVATE}"), UNTRUSTED),
    "no route": (_request("GET / HTTP/1.1", f"Host: {UNROUTED}"), UNTRUSTED),
    "DELETE without body": (_request("DELETE /d HTTP/1.1", f"Host: {PUBLIC}"), UNTRUSTED),
    "Host after Content-Length": (_request("POST /x HTTP/1.1", "CONTENT-LENGTH: 1",
                                           f"hOsT: {OTHER}", body=b"1"), UNTRUSTED),
    "chunked": (_request("POST /c HTTP/1.1", f"Host: {PUBLIC}", "Transfer-Encoding: chunked",
                         body=b"3\r\nabc\r\n0\r\n\r\n"), UNTRUSTED),
    # A trusted client's X-Forwarded-For: one field, the peer appended, where it was.
    "trusted X-Forwarded-For": (_request("GET / HTTP/1.1", f"Host: {PUBLIC}",
                                         "X-Forwarded-For: 1.2.3.4", "X-Other: a"), TRUSTED),
    "trusted empty X-Forwarded-For": (_request("GET / HTTP/1.1", f"Host: {PUBLIC}",
                                               "X-Forwarded-For: "), TRUSTED),
    # proxy.max_body_size is 4096 here: 413 on both, never forwarded.
    "body over max_body_size": (_request("POST /big HTTP/1.1", f"Host: {PUBLIC}",
                                         f"Content-Length: {MAX_BODY + 1}",
                                         body=b"x" * (MAX_BODY + 1)), UNTRUSTED),
    # A field that may appear once (aiohttp's parser refuses a second one).
    "two User-Agent fields": (_request("GET / HTTP/1.1", f"Host: {PUBLIC}", "User-Agent: a",
                                       "User-Agent: b"), UNTRUSTED),
    "two Content-Type fields": (_request("POST / HTTP/1.1", f"Host: {PUBLIC}",
                                         "Content-Type: text/plain",
                                         "Content-Type: text/plain"), UNTRUSTED),
    # Bytes beyond ASCII in a value (obs-text), not UTF-8: as they came, or refused.
    "obs-text in a value": (_request("GET / HTTP/1.1", f"Host: {PUBLIC}", "X-Custom: \xe9t\xe9"),
                            UNTRUSTED),
    # A whole request, then bytes that are not one, in the same write.
    # Heads that can never be valid, not finished (no sentinel after HTTP/1.0): refused
    # at once, or when header_timeout ends them.
    "bad method, head not finished": (f"G\xc9T / HTTP/1.0\r\nHost: {PUBLIC}\r\n"
                                      .encode("latin-1"), UNTRUSTED),
    "GET *, head not finished": (f"GET * HTTP/1.0\r\nHost: {PUBLIC}\r\n".encode(), UNTRUSTED),
}


@pytest.mark.parametrize("case", EDGES)
def test_edges_get_the_same_answers_and_upstream_bytes(gates: dict[str, Gate],
                                                       case: str) -> None:
    check(gates, *EDGES[case])


def test_junk_after_a_request_in_the_same_read_is_never_forwarded(
        gates: dict[str, Gate]) -> None:
    """The one difference the two paths keep, on purpose: bytes that are not HTTP right
    after a valid request, in the same read. aiohttp's parser parses a whole read before
    it handles any of it, so the junk fails the valid request too (400 only); the fast
    path serves requests one at a time (200, then 400 for the junk). Both answer the
    junk with 400, close, and forward nothing of it."""
    data = _request("GET /a HTTP/1.1", f"Host: {PUBLIC}") + b"\x00" + \
        _request("GET /after-junk HTTP/1.1", f"Host: {OTHER}")
    answers = asyncio.run(both(gates, data, UNTRUSTED))
    assert [(a.status, a.decision[:1]) for a in answers["fast"]] == \
        [(200, ("upstream",)), (400, ("error",))], answers["fast"]
    assert [(a.status, a.decision[:1]) for a in answers["aiohttp"]] == \
        [(400, ("error",))], answers["aiohttp"]
    for path, got in answers.items():
        assert all(a.decision != ("upstream", "staging", "other") for a in got), (path, got)


def test_bytes_after_connection_close_are_never_forwarded(gates: dict[str, Gate]) -> None:
    """The second difference kept on purpose: a request that says `Connection: close`,
    with another one after it in the same read. The fast path answers the first and
    closes, ignoring what follows (RFC 9112 §9.6); aiohttp's parser refuses the read
    (400, "Data after `Connection: close`"). Neither forwards what follows."""
    data = _request("GET /first HTTP/1.1", f"Host: {PUBLIC}", "Connection: close") + \
        _request("GET /after-close HTTP/1.1", f"Host: {OTHER}")
    answers = asyncio.run(both(gates, data, UNTRUSTED))
    assert [(a.status, a.decision[:1]) for a in answers["fast"]] == \
        [(200, ("upstream",))], answers["fast"]
    assert [(a.status, a.decision[:1]) for a in answers["aiohttp"]] == \
        [(400, ("error",))], answers["aiohttp"]
    for path, got in answers.items():
        assert all(a.decision != ("upstream", "staging", "other") for a in got), (path, got)


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate, Phase.shrink),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=requests())
def test_random_and_mutated_requests_get_the_same_answers_and_upstream_bytes(
    gates: dict[str, Gate], request: tuple[bytes, str],
) -> None:
    assume(not body_never_ends(with_sentinel(request[0])))
    assume(not swallows_sentinel(request[0]))
    check(gates, *request)

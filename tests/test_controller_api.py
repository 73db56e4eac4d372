"""The controller API trusts nobody by default: a token on every /v1/* call, no browser.

Real `wakegate up` processes; calls over real HTTP, with urllib, setting the
headers a browser or a local attacker would send. Also `apply` (the
controller's own file, never a path it is sent), the token file, the CLI's
errors, and key management (`keys list`, `keys revoke`) in every deployment.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .client import fetch
from .conftest import Wakegate, hello_service, process_env, wait_until
from .modes import wakegate_in_every_mode  # noqa: F401
from .raw_client import exchange_bytes

PRIVATE = Wakegate.host("hello", "private")
NAME = "wakegate-controller.test"  # controller.hostnames
ORIGIN = "https://admin.example.test"  # controller.allowed_origins


def config(**extra: Any) -> dict[str, Any]:
    return {
        "environments": {"private": {}, "demo": {}},
        "services": {"hello": hello_service()},
        "controller": {"hostnames": [NAME], "allowed_origins": [ORIGIN]},
        **extra,
    }


CHANGES = [
    ("GET", "/v1/status", None),
    ("GET", "/v1/routes", None),
    ("GET", "/v1/proxies", None),
    ("GET", "/v1/keys", None),
    ("GET", "/v1/release/status?service=hello", None),
    ("POST", "/v1/keys", {"service": "hello"}),
    ("POST", "/v1/activate", {"environment": "demo", "service": "hello"}),
    ("POST", "/v1/activity", {"proxy": "p", "seq": 1, "ttl": 60, "table": None,
                              "instances": [{"environment": "demo", "service": "hello",
                                             "in_flight": 5, "idle_seconds": 0}]}),
    ("POST", "/v1/apply", {}),
    ("POST", "/v1/deploy", {"service": "hello", "environment": "demo", "version": "9.9.9"}),
    ("POST", "/v1/promote", {"service": "hello"}),
    ("POST", "/v1/release/promote", {"service": "hello"}),
    ("DELETE", "/v1/keys/0123456789ab", None),
]


@pytest.mark.modes("up")
def test_every_v1_call_needs_the_token_and_nothing_changes_without_it(
    wakegate: Any, tmp_path: Path,
) -> None:
    wg = wakegate(config())
    token_file = wg.state_dir / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    keys_before = (wg.state_dir / "keys.json").read_bytes()
    for method, path, body in CHANGES:
        for sent in (None, "wrong-" + token[6:], token + "x"):
            status, answer, headers = wg.call(method, path, body, token=sent)
            assert status == 401, (method, path, sent is None, status, answer)
            assert answer["error"] == "unauthorized" and "api-token" in answer["message"], answer
            assert headers.get("WWW-Authenticate") == 'Bearer realm="wakegate"'
    # Nothing happened: no wake, no key, no version, no sleep held off.
    status = wg.status()
    assert status[("demo", "hello")]["state"] == "sleeping"
    assert status[("demo", "hello")]["version"] == "1.0.0"
    assert (wg.state_dir / "keys.json").read_bytes() == keys_before
    for open_path in ("/healthz", "/readyz", "/metrics"):
        with urllib.request.urlopen(wg.controller + open_path, timeout=10) as resp:
            assert resp.status == 200, open_path
    # The token is nowhere but in its file.
    said = "\n".join(wg.stdout) + wg.stderr()
    assert token not in said
    assert str(token_file) in said  # where it is, though
    assert token not in wg.metrics_text(wg.controller)


@pytest.mark.modes("up")
def test_browser_shaped_requests_are_refused(wakegate: Any) -> None:
    wg = wakegate(config())
    port = wg.controller_port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1", f"{NAME}:{port}",
                 f"{NAME.upper()}."):
        status, answer, _ = wg.call("GET", "/v1/status", headers={"Host": host})
        assert status == 200, (host, answer)
    # DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its name.
    for host in ("evil.example", f"evil.example:{port}", f"{NAME}.evil.example", "localhost.x"):
        status, answer, _ = wg.call("GET", "/v1/status", headers={"Host": host})
        assert status == 421 and answer["error"] == "misdirected_request", (host, answer)
    # A page of another site (its fetch sends Origin).
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port}"):
        status, answer, _ = wg.call("GET", "/v1/status", headers={"Origin": origin})
        assert status == 403 and answer["error"] == "forbidden_origin", (origin, answer)
    status, _, _ = wg.call("GET", "/v1/status", headers={"Origin": ORIGIN})
    assert status == 200
    # Bodies a form or a no-preflight fetch can send are not JSON: 415, nothing made.
    body = {"service": "hello"}
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        status, answer, _ = wg.call("POST", "/v1/keys", body,
                                    headers={"Content-Type": content_type})
        assert status == 415 and answer["error"] == "unsupported_media_type", answer
    assert wg.cli("keys", "list", "--json", check=True).stdout.count('"id"') == 1  # up's own
    status, answer, _ = wg.call("POST", "/v1/keys", body)
    assert status == 201 and answer["key"].startswith("wg_"), answer


@pytest.mark.modes("up")
def test_apply_rereads_its_own_file_and_never_a_path_it_is_sent(
    wakegate: Any, tmp_path: Path,
) -> None:
    wg = wakegate(config())
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(json.dumps({
        "environments": {"staging": {}},
        "services": {"evil": {"command": f"{{python}} -c \"open('{marker}', 'w')\"",
                              "environments": ["staging"]}},
    }))
    status, answer, _ = wg.call("POST", "/v1/apply", {"config": str(evil)})
    assert status == 400 and "takes no path" in answer["message"], answer
    assert str(wg.config_path) in answer["message"]
    assert ("staging", "evil") not in wg.status() and not marker.exists()

    # The controller's own file, edited: applied from {} (the file is re-read).
    wg.config["services"]["greeter"] = hello_service(environments=["demo"])
    wg.write_config()
    digest = hashlib.sha256(wg.config_path.read_bytes()).hexdigest()
    status, answer, _ = wg.call("POST", "/v1/apply", {"sha256": "0" * 64})
    assert status == 409 and answer["error"] == "config_differs", answer
    assert ("demo", "greeter") not in wg.status()
    status, answer, _ = wg.call("POST", "/v1/apply", {"sha256": digest})
    assert status == 200 and answer["added"] == ["demo/greeter"], answer
    assert answer["config"] == str(wg.config_path)

    # The CLI checks the file it is given, and the controller refuses another one.
    other = tmp_path / "other.yaml"
    other.write_text(wg.config_path.read_text().replace("greeter", "other"))
    refused = wg.cli("apply", "-c", str(other))
    assert refused.returncode == 2, refused.stderr
    assert "differs from the file you checked" in refused.stderr, refused.stderr
    assert str(wg.config_path) in refused.stderr
    assert ("demo", "other") not in wg.status()


@pytest.mark.modes("up")
def test_a_token_file_others_can_read_stops_the_start(wakegate: Any) -> None:
    wg = wakegate(config())
    wg.stop()
    token_file = wg.state_dir / "api-token"
    token_file.chmod(0o644)
    code, stderr = wg.run_to_exit()
    assert code == 2, stderr
    assert f"{token_file}: other users can read the API token (mode 644)" in stderr, stderr
    assert "Traceback" not in stderr
    token_file.unlink()  # a new one is made
    old = wg.stdout[:]
    wg.start()
    assert wg.stdout != old and token_file.exists()


def run_cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.modes("up")
def test_the_cli_says_what_is_wrong_never_a_traceback(wakegate: Any, tmp_path: Path) -> None:
    wg = wakegate(config())
    env = process_env("cli", None)
    cases = [
        (["status", "--controller", "notaurl"], 2, "give the controller API's URL"),
        (["status", "--controller", "http://"], 2, "give the controller API's URL"),
        (["status", "--controller", "http://127.0.0.1:99999"], 2, "give the controller"),
        (["status", "--controller", wg.base], 2, "is a wakegate proxy, not the controller API"),
        # Neither -c nor WAKEGATE_TOKEN: the CLI has no token to send.
        (["status", "--controller", wg.controller], 2, "needs its token"),
        (["keys", "revoke", "nothex", "-c", str(wg.config_path)], 2, "12 lowercase hex"),
        (["keys", "revoke", "0123456789ab", "-c", str(wg.config_path)], 2, "no key"),
    ]
    for args, code, words in cases:
        result = run_cli(args, tmp_path, env)
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    wrong = run_cli(["status", "--controller", wg.controller], tmp_path,
                    {**env, "WAKEGATE_TOKEN": "not-the-token"})
    assert wrong.returncode == 2 and "refused the token from WAKEGATE_TOKEN" in wrong.stderr
    ok = run_cli(["status", "-c", str(wg.config_path)], tmp_path, env)
    assert ok.returncode == 0 and "hello" in ok.stdout, ok.stderr


# --- key management, in every deployment ---


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


async def test_keys_list_and_revoke_on_every_proxy(wakegate: Any) -> None:
    wg = wakegate(config())
    first = wg.cli("keys", "create", "hello", check=True).stdout.strip().splitlines()[-1]
    second = wg.cli("keys", "create", "hello", check=True).stdout.strip().splitlines()[-1]
    listed = json.loads(wg.cli("keys", "list", "hello", "--json", check=True).stdout)
    ours = {row["id"]: row for row in listed}
    assert {key_id(first), key_id(second)} <= set(ours), listed
    for key in (first, second):
        row = ours[key_id(key)]
        assert (row["environment"], row["service"]) == ("private", "hello")
        assert row["created"] > 0 and row["last_used"] is None, row
    async with aiohttp.ClientSession() as http:
        answer = await fetch(http, wg.base, PRIVATE, **{"X-API-Key": first})
        assert answer.status == 200, answer

        def last_used() -> Any:
            rows = json.loads(wg.cli("keys", "list", "--json", check=True).stdout)
            return next(r for r in rows if r["id"] == key_id(first))["last_used"]

        wait_until(last_used, 10.0, "keys list to show when the key was last used")
        shown = wg.cli("keys", "list", check=True).stdout
        assert key_id(first) in shown and "never" in shown, shown
        everything = shown + json.dumps(listed)
        for key in (first, second):
            assert key not in everything
            assert hashlib.sha256(key.encode()).hexdigest() not in everything

        revoked = wg.cli("keys", "revoke", key_id(first), check=True).stdout
        assert f"revoked key {key_id(first)} of private/hello" in revoked, revoked
        bases = [p.base for p in wg.split.proxies] if hasattr(wg, "split") else [wg.base]
        for base in bases:
            async def refused(base: str = base) -> bool:
                a = await fetch(http, base, PRIVATE, **{"X-API-Key": first})
                return a.status == 401

            deadline = time.monotonic() + 5.0  # the new table reaches every proxy at once
            while not await refused():
                if time.monotonic() > deadline:
                    pytest.fail(f"the revoked key still works on {base}")
            kept = await fetch(http, base, PRIVATE, **{"X-API-Key": second})
            assert kept.status == 200, kept
    rows = json.loads(wg.cli("keys", "list", "--json", check=True).stdout)
    assert key_id(first) not in {r["id"] for r in rows}
    again = wg.cli("keys", "revoke", key_id(first))
    assert again.returncode == 2 and "no key" in again.stderr, again.stderr


@pytest.mark.modes("up")
async def test_malformed_requests_and_bodies_get_json_and_no_traceback(wakegate: Any) -> None:
    wg = wakegate(config())
    token = wg.api_token()
    raw_requests = [
        # A control byte in a header (here, one that looks like a token).
        f"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\x01"
        "\r\n\r\n",
        "GET /v1/status HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ]
    for text in raw_requests:
        answer = await exchange_bytes(wg.controller_port, text.encode("latin-1"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b" 400 " in head.split(b"\r\n")[0], answer
        assert json.loads(body)["error"] == "bad_request", answer
        assert token.encode() not in answer
    # JSON that is valid but absurd: an integer of 5000 digits, nesting 100k deep.
    for body_text in ('{"service": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        status, answer, _ = wg.call("POST", "/v1/keys", body_text.encode(), timeout=10)
        assert status == 400 and answer["error"] == "bad_request", (status, answer)
    stderr = wg.stderr()
    assert "Traceback" not in stderr and token not in stderr, stderr[-2000:]


@pytest.mark.modes("up")
def test_an_idempotency_key_names_one_request(wakegate: Any) -> None:
    wg = wakegate(config())
    first = wg.call("POST", "/v1/deploy", {"service": "hello", "environment": "demo",
                                           "version": "1.0.1"}, headers={"Idempotency-Key": "k1"})
    assert first[0] == 200 and first[1]["changed"], first
    other = wg.call("POST", "/v1/deploy", {"service": "hello", "environment": "private",
                                           "version": "9.9.9"}, headers={"Idempotency-Key": "k1"})
    assert other[0] == 422 and other[1]["error"] == "idempotency_key_reused", other
    assert wg.status()[("private", "hello")]["version"] == "1.0.0"


@pytest.mark.modes("up")
def test_a_token_in_the_environment_is_checked_and_trimmed(wakegate: Any,
                                                           tmp_path: Path) -> None:
    wg = wakegate(config())
    env = process_env("cli", None)
    args = ["status", "--controller", wg.controller]
    trimmed = run_cli(args, tmp_path, {**env, "WAKEGATE_TOKEN": f" {wg.api_token()}\n"})
    assert trimmed.returncode == 0, trimmed.stderr  # a Secret made from a file: a newline
    for bad in ("two words", "caf\u00e9"):
        refused = run_cli(args, tmp_path, {**env, "WAKEGATE_TOKEN": bad})
        assert refused.returncode == 2 and "WAKEGATE_TOKEN: not a token" in refused.stderr
        assert bad not in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.modes("up")
def test_the_cli_refuses_urls_and_answers_that_are_not_the_controllers(
    wakegate: Any, tmp_path: Path,
) -> None:
    wg = wakegate(config())
    env = {**process_env("cli", None), "WAKEGATE_TOKEN": wg.api_token()}
    for url in ("http://[::1", "http://a b:80", "http://127.0.0.1:1#x", "http://u@127.0.0.1:1"):
        result = run_cli(["status", "--controller", url], tmp_path, env)
        assert result.returncode == 2 and "give the controller API's URL" in result.stderr, url
        assert "Traceback" not in result.stderr
    result = run_cli(["status", "--controller", wg.base], tmp_path, env)
    assert result.returncode == 2 and "is a wakegate proxy" in result.stderr, result.stderr
    # A server that answers 200 with JSON, but not the controller's.
    with json_server() as url:
        for args in (["status"], ["keys", "list"], ["release", "status", "hello"]):
            result = run_cli([*args, "--controller", url], tmp_path, env)
            assert result.returncode == 1, (args, result.stderr)
            assert "not the controller API's" in result.stderr, (args, result.stderr)
            assert "Traceback" not in result.stderr
    listen = run_cli(["proxy", "--controller", "http://127.0.0.1:99999"], tmp_path, env)
    assert listen.returncode == 2 and "--controller" in listen.stderr, listen.stderr
    bad_listen = run_cli(["proxy", "--listen", "[::1", "--controller", wg.controller],
                         tmp_path, env)
    assert bad_listen.returncode == 2 and "--listen" in bad_listen.stderr, bad_listen.stderr


@contextlib.contextmanager
def json_server() -> Iterator[str]:
    """An HTTP server on a free loopback port that answers every GET with `{"ok": true}`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

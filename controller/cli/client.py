"""The CLI's side of the controller API: where it is, one call, its token, its retries, and
errors a person can act on (never a traceback, whatever the address or the answer)."""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from common.backoff import Backoff

from ..api import token as api_token
from ..api.token import TokenError
from ..spec import Config
from .exit import EXIT_USAGE, fail, load

DEFAULT_CONTROLLER = "http://127.0.0.1:8081"
EXAMPLE_URL = DEFAULT_CONTROLLER
_RETRIES = 3
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


class ClientError(Exception):
    """The call failed; `str()` says why and what to do, `exit_code` is the CLI's status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_url(url: str, option: str = "--controller") -> str:
    """`url` without a trailing slash, or ClientError if it is not http(s)://host[:port]."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
        good = (parts.scheme in ("http", "https") and (parts.port is None or parts.port > 0)
                and not parts.path.strip("/") and not parts.query and not parts.fragment
                and "@" not in parts.netloc and _is_host(host))
    except ValueError:  # a bad port, an unclosed [
        good = False
    if not good:
        raise ClientError(f"{option} {url!r}: give the controller API's URL, e.g. {EXAMPLE_URL} "
                          "(listen.controller of the config)", 2)
    return url.strip().rstrip("/")


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST.fullmatch(host))


class ApiClient:
    def __init__(self, url: str, token: str | None, token_from: str | None) -> None:
        """`token_from` names where the token came from, for messages (never the token)."""
        self.url = url
        self._token = token
        self._token_from = token_from

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30,
             retry: bool = False, fields: tuple[str, ...] = ()) -> Any:
        """The JSON answer of one call, an object with `fields`. `retry`: a change sent
        again, with the same Idempotency-Key, when its answer was lost (timeout, reset);
        the controller then answers what the first one did."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        attempts = _RETRIES if retry else 1
        if retry:
            request.add_header("Idempotency-Key", uuid.uuid4().hex)
        backoff = Backoff(0.5, 1.0, jitter=False)  # 0.5 s, then 1 s
        for attempt in range(attempts):
            try:
                answer = self._send(request, timeout)
                if fields and not (isinstance(answer, dict) and all(f in answer for f in fields)):
                    raise ClientError(f"{self.url} answered with JSON that is not the controller "
                                      "API's: is that the address of listen.controller?")
                return answer
            except (TimeoutError, ConnectionResetError) as exc:
                if attempt + 1 == attempts:
                    raise ClientError(
                        f"no answer from the controller at {self.url} ({exc}); the command may "
                        "still be running: `wakegate status` shows the state, and running the "
                        "command again is safe") from None
                time.sleep(backoff.next())
        raise AssertionError("unreachable")

    def _send(self, request: urllib.request.Request, timeout: float) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return self._json(resp.read(), resp.status, resp.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | ConnectionResetError):
                raise exc.reason from None
            raise self._unreachable(exc.reason) from None
        except (TimeoutError, ConnectionResetError):
            raise  # retried with the same Idempotency-Key
        except (ConnectionError, OSError, ValueError, http.client.HTTPException) as exc:
            # A URL or header http.client refuses, a server that is not HTTP.
            raise self._unreachable(exc) from None

    def _json(self, raw: bytes, status: int, content_type: str) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(
                f"{self.url} answered HTTP {status} ({content_type}), not the controller API's "
                "JSON: is that the address of listen.controller?") from None

    def _refused(self, exc: urllib.error.HTTPError) -> ClientError:
        try:
            answer = json.loads(exc.read())
        except (ValueError, OSError):
            answer = None
        if not isinstance(answer, dict) or "error" not in answer:
            return ClientError(
                f"{self.url} answered HTTP {exc.code} {exc.reason}, which is not the controller "
                "API: is that the address of listen.controller?", 1)
        code = answer.get("error")
        message = str(answer.get("message") or exc.reason)
        if code == "no_route":
            return ClientError(
                f"{self.url} is a wakegate proxy, not the controller API: give the address of "
                f"listen.controller (e.g. {EXAMPLE_URL}) with --controller or -c FILE", 2)
        if exc.code == 401:
            if self._token_from is None:
                return ClientError(
                    "the controller API needs its token: run the command with -c FILE, the "
                    "config wakegate runs with (the token is in its state_dir/api-token), or "
                    "set WAKEGATE_TOKEN", 2)
            return ClientError(
                f"the controller refused the token from {self._token_from}: give -c the "
                "config wakegate runs with, or set WAKEGATE_TOKEN to the controller's token", 2)
        return ClientError(message, 2 if 400 <= exc.code < 500 else 1)

    def _unreachable(self, reason: object) -> ClientError:
        return ClientError(f"cannot reach the controller at {self.url} ({reason}); is `wakegate "
                           "up` running? (set --controller, -c FILE or WAKEGATE_CONTROLLER)")


def url_host(host: str) -> str:
    """`host` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def api_url(config: Config) -> str:
    """The controller API's URL from the config's listen.controller."""
    return f"http://{url_host(config.controller.host)}:{config.controller.port}"


def config_file(args: argparse.Namespace) -> str | None:
    """The config file of -c, else wakegate.yaml here if there is one, else None."""
    return args.config if args.config_given or os.path.exists(args.config) else None


def config_if_any(args: argparse.Namespace) -> Config | None:
    """The config of `config_file`, checked, or None."""
    path = config_file(args)
    return load(path) if path is not None else None


def controller_url(explicit: str | None, config: Config | None) -> tuple[str, str]:
    """Where the controller API is, and which option said so (for messages): --controller,
    else WAKEGATE_CONTROLLER, else the config's listen.controller, else the default."""
    url = explicit or os.environ.get("WAKEGATE_CONTROLLER")
    if url:
        return url, "--controller" if explicit else "WAKEGATE_CONTROLLER"
    return (DEFAULT_CONTROLLER if config is None else api_url(config)), "listen.controller"


def client(args: argparse.Namespace) -> ApiClient:
    """Where the controller API is (--controller, WAKEGATE_CONTROLLER, the config's
    listen.controller) and its token (WAKEGATE_TOKEN, else the config's state_dir)."""
    config = config_if_any(args)
    url, option = controller_url(args.controller, config)
    try:
        url = check_url(url, option)
        token, token_from = api_token.from_env(), api_token.ENV
        if token is None and config is not None:
            token = api_token.read(config.state_dir)
            token_from = api_token.token_path(config.state_dir)
    except (ClientError, TokenError) as exc:
        fail(str(exc), EXIT_USAGE)
    return ApiClient(url, token, token_from if token is not None else None)


def call(args: argparse.Namespace, method: str, path: str, body: Any = None,
         timeout: float = 30, fields: tuple[str, ...] = ()) -> Any:
    """The controller's JSON answer, an object with `fields` (else the CLI says why)."""
    # A change is sent again, with the same key, when its answer was lost.
    # (Not a new key: a second one would be made, and the first never shown.)
    retry = method == "POST" and not path.startswith("/v1/keys")
    try:
        return client(args).call(method, path, body, timeout, retry, fields)
    except ClientError as exc:
        fail(str(exc), exc.exit_code)

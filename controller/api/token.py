"""The controller API's token: every call that changes state or reveals a secret needs it.

Like Jupyter's token or the Docker socket's file permissions: the controller
makes a random token at its first start and keeps it in `state_dir/api-token`,
readable by its own user only (0600). The CLI, `wakegate proxy` and worker
processes on the same machine read it from there; `WAKEGATE_TOKEN` overrides
the file everywhere (proxies on other hosts, Kubernetes, where it comes from
a Secret). So no process that cannot read wakegate's state_dir can call the
API, whatever address it listens on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat

TOKEN_FILE = "api-token"
ENV = "WAKEGATE_TOKEN"


class TokenError(Exception):
    """The token file cannot be used; the message names the file and says what to do."""


def token_path(state_dir: str) -> str:
    return os.path.join(state_dir, TOKEN_FILE)


def from_env() -> str | None:
    """WAKEGATE_TOKEN (spaces and line ends around it ignored: a Secret made from a file
    often ends with one); TokenError if it is not a token."""
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return None
    token = raw.strip()
    if not _is_token(token):
        raise TokenError(f"{ENV}: not a token: use one line of printable ASCII characters "
                         "without spaces (e.g. `openssl rand -hex 32`)")
    return token


def _is_token(text: str) -> bool:
    return text.isascii() and text.isprintable() and " " not in text


def load_or_create(state_dir: str) -> tuple[str, str | None]:
    """The controller's token and the file it is in (None: it came from WAKEGATE_TOKEN)."""
    token = from_env()
    if token is not None:
        return token, None
    path = token_path(state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    try:
        # O_EXCL: two controllers starting at once never hand out two tokens.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path, check_mode=True), path
    try:
        token = secrets.token_urlsafe(32)
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return token, path


def read(state_dir: str) -> str | None:
    """The token for a client of the API: WAKEGATE_TOKEN, else the file (None if absent)."""
    token = from_env()
    if token is not None:
        return token
    path = token_path(state_dir)
    if not os.path.exists(path):
        return None
    return _read(path, check_mode=False)


def check(state_dir: str) -> str | None:
    """What is wrong with the token file the controller would use, or None (for validate)."""
    try:
        if from_env() is not None or not os.path.exists(token_path(state_dir)):
            return None
        _read(token_path(state_dir), check_mode=True)
    except TokenError as exc:
        return str(exc)
    return None


def _read(path: str, check_mode: bool) -> str:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(4096)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the API token: {exc.strerror}") from None
    if check_mode and mode & (stat.S_IRWXG | stat.S_IRWXO):
        # As ssh does with a private key: a token others can read is no secret.
        raise TokenError(
            f"{path}: other users can read the API token (mode {stat.S_IMODE(mode):03o}); "
            f"`chmod 600 {path}`, or delete it and wakegate makes a new one")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or not _is_token(token):
        raise TokenError(f"{path}: not an API token (one line of printable characters); "
                         "delete it and wakegate makes a new one")
    return token

"""Applying the controller's own config file (`POST /v1/apply`, `wakegate apply`, SIGHUP):
all of it or, if anything in it is wrong, none of it."""

from __future__ import annotations

import hashlib
import logging

from aiohttp import web

from ..config import ConfigError, load_config
from ..config_apply import apply_config
from ..releases import DeployRefused
from ..scaler import Scaler
from .answers import error

log = logging.getLogger("wakegate.api")


def apply_file(scaler: Scaler, path: str, expect_sha256: str | None = None) -> web.Response:
    """Load, validate and apply the controller's own config file; an invalid one changes nothing.

    `expect_sha256`: the digest of the file the caller validated; a file that
    differs is refused (the caller edited another file than the controller reads).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        return error(400, "invalid_config", f"{path}: cannot read the controller's config "
                     f"file: {exc.strerror}. The running system keeps the old one.",
                     problems=[f"{path}: {exc.strerror}"])
    if expect_sha256 is not None and hashlib.sha256(raw).hexdigest() != expect_sha256:
        return error(409, "config_differs",
                     f"The controller applies its own config file, {path}, and it differs from "
                     "the file you checked: edit that file (or run `wakegate apply -c` with "
                     "it), then apply again. Nothing was changed.", config=path)
    try:
        config = load_config(path, raw)
    except ConfigError as exc:
        log.error("config not applied:\n%s", "\n".join(exc.problems))
        return error(400, "invalid_config", "The config was refused as a whole; the running "
                     "system keeps the old one.", problems=exc.problems)
    try:
        result = apply_config(scaler, config)
    except DeployRefused as exc:
        log.error("config not applied: %s", exc)
        return error(409, "needs_restart", f"{exc}. Nothing was changed.")
    log.info("applied %s: added %s, removed %s", path, result["added"] or "none",
             result["removed"] or "none")
    return web.json_response({**result, "config": path})

"""`wakegate validate`, and the checks `up` and `controller` make before they start: the
config, the state files under state_dir, and the warnings about what is valid but risky."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from ..api import token as api_token
from ..spec import Config
from ..statefile import StateFileError, read_state
from .exit import exit_with, load


def cmd_validate(args: argparse.Namespace) -> None:
    config = load(args.config)
    problems = state_problems(config)
    if problems:
        exit_with(problems)
    found = warnings(config)
    for warning in found:
        print(warning, file=sys.stderr)
    n = len(config.instances())
    noted = f"; {len(found)} warning{'s' if len(found) > 1 else ''}" if found else ""
    print(f"{args.config}: ok ({len(config.environments)} environments, "
          f"{len(config.services)} services, {n} instances{noted})")


def state_problems(config: Config) -> list[str]:
    """Every problem in the state files under state_dir the local runtime reads, all at once.

    Only read: a file with a problem is left exactly as it is, for a person to fix or remove.
    """
    token_problem = api_token.check(config.state_dir)
    problems = [token_problem] if token_problem is not None else []
    if config.runtime != "local":
        return problems  # the rest of its state is on the cluster's objects
    # Here, not at the top: the commands that talk to the controller start without them.
    from .. import keys, versions
    from ..runtimes import local

    for name, check in ((keys.KEYS_FILE, keys.check_keys),
                        (versions.VERSIONS_FILE, versions.check_versions),
                        (local.RELEASES_FILE, local.check_releases),
                        (local.EPHEMERAL_FILE, local.check_ephemeral)):
        try:
            read_state(os.path.join(config.state_dir, name), check, None)
        except StateFileError as exc:
            problems.extend(exc.problems)
    if not problems:
        problems.extend(_ephemeral_clashes(config))
    return problems


def _ephemeral_clashes(config: Config) -> list[str]:
    """An ephemeral environment kept in state_dir whose name the config now gives one of its
    own environments: one name, one environment (apply refuses the same)."""
    from ..ephemeral_specs import config_clashes
    from ..runtimes import local

    path = os.path.join(config.state_dir, local.EPHEMERAL_FILE)
    kept = read_state(path, local.check_ephemeral, {})
    return [f"{os.path.abspath(path)}: {name}: an ephemeral environment of this name exists, "
            f"and {config.path} defines environments.{own}: rename that one, or "
            f"start without it and delete the ephemeral one first (wakegate env delete {name})"
            for name, own in config_clashes(config, kept)]


def warnings(config: Config) -> list[str]:
    """What is valid but probably not what the operator wants: `file: field: warning: ...`."""
    found = list(config.warnings)
    if not _is_loopback(config.controller.host) and not os.environ.get(api_token.ENV, "").strip():
        found.append(
            f"{config.path}: listen.controller: warning: {config.controller.host} is not a "
            "loopback address and WAKEGATE_TOKEN is not set: the controller API is reachable "
            "from the network, guarded only by the token it makes in "
            f"{api_token.token_path(config.state_dir)}. Set WAKEGATE_TOKEN (to a long random "
            "string) so that proxies on other hosts can use it, and keep the API on a private "
            "network or behind TLS.")
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

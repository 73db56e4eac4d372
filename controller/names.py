"""The name rules: what environments, services, versions and host names may be called.

At the bottom of the controller, beside spec and units: the config file, the
commands (deploy takes a version) and the Kubernetes runtime (it reads names
back from labels and annotations) all check names by these rules, and none of
them has to import another to do it. Only the rules live here; each caller
words its own problem, because a config file, an API answer and a log line
say different things to different people.
"""

from __future__ import annotations

import re
from typing import TypeGuard

__all__ = [
    "MAX_HOST_LENGTH",
    "is_dns_label",
    "is_dns_name",
    "is_environment_name",
    "is_prefix",
    "is_service_name",
    "is_version",
]

# A host name is {service}.{environment}.{domain}; DNS allows 253 characters.
MAX_HOST_LENGTH = 253

# 1 to 24 letters, digits and dashes, starting with a letter.
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,23}")
# A lowercase RFC 1123 label: service names, namespaces, lease names.
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# One label of a host name as a person may write it (hosts ignore case).
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# 1 to 128 letters, digits, dots, dashes and underscores, starting with a
# letter or digit.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# An environment's prefix: in object names ({prefix}-{service}) and image tags.
_PREFIX = re.compile(r"[a-z0-9]{1,8}")


def is_environment_name(name: object) -> TypeGuard[str]:
    """1 to 24 letters, digits and dashes, starting with a letter."""
    return isinstance(name, str) and _ENVIRONMENT_NAME.fullmatch(name) is not None


def is_prefix(name: object) -> TypeGuard[str]:
    """An environment's prefix: 1 to 8 lowercase letters and digits (none is "", not one)."""
    return isinstance(name, str) and _PREFIX.fullmatch(name) is not None


def is_dns_label(name: object) -> TypeGuard[str]:
    """A lowercase RFC 1123 DNS label: 1 to 63 of a-z, 0-9 and "-", alphanumeric at both ends."""
    return isinstance(name, str) and _DNS_LABEL.fullmatch(name) is not None


def is_service_name(name: object) -> TypeGuard[str]:
    """A service name is a lowercase DNS label: it is the first label of its hosts."""
    return is_dns_label(name)


def is_dns_name(text: str) -> bool:
    """Labels of letters, digits and dashes joined by dots; no port, no trailing dot."""
    return len(text) <= MAX_HOST_LENGTH and all(
        _HOST_LABEL.fullmatch(label) for label in text.split(".")
    )


def is_version(text: object) -> TypeGuard[str]:
    """1 to 128 letters, digits, dots, dashes and underscores, starting with a letter or digit."""
    return isinstance(text, str) and _VERSION.fullmatch(text) is not None

"""Validation of names and metadata, with the messages of apimachinery's util/validation."""

from __future__ import annotations

import re
from typing import Any

from .errors import FieldError

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
_DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

MSG_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
MSG_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
MSG_DNS1035 = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def _name_errors(value: str, longest: int, pattern: re.Pattern[str], message: str) -> list[str]:
    errs = []
    if len(value) > longest:
        errs.append(f"must be no more than {longest} characters")
    if not pattern.match(value):
        errs.append(message)
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    return _name_errors(value, 253, _DNS1123_SUBDOMAIN, MSG_SUBDOMAIN)


def dns1123_label(value: str) -> list[str]:
    return _name_errors(value, 63, _DNS1123_LABEL, MSG_LABEL)


def dns1035_label(value: str) -> list[str]:
    return _name_errors(value, 63, _DNS1035_LABEL, MSG_DNS1035)


NAME_RULES = {"subdomain": dns1123_subdomain, "label": dns1123_label, "dns1035": dns1035_label}


def qualified_name(value: str) -> list[str]:
    """A label or annotation key: an optional DNS subdomain prefix and a name of 63 at most."""
    errs = []
    prefix, _, name = value.rpartition("/")
    if "/" in value:
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend(f"prefix part {e}" for e in dns1123_subdomain(prefix))
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if name and not _QUALIFIED_NAME.match(name):
        errs.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
            "'123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return errs


def label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errs.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', "
            "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  "
            "or 'my_value',  or '12345', regex used for validation is "
            "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return errs


def _string_map(value: Any, path: str, *, label_values: bool) -> list[FieldError]:
    """Labels or annotations: qualified-name keys (annotation keys in any case), string values,
    and for labels, values a label may hold."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [FieldError("FieldValueInvalid", path, value, "must be a map of strings")]
    out = []
    for key, val in value.items():
        name = key if label_values else key.lower()
        out += [FieldError("FieldValueInvalid", path, key, e) for e in qualified_name(name)]
        if not isinstance(val, str):
            out.append(FieldError("FieldValueInvalid", f"{path}[{key}]", val, "must be a string"))
        elif label_values:
            out += [FieldError("FieldValueInvalid", path, val, e) for e in label_value(val)]
    return out


def labels(value: Any, path: str) -> list[FieldError]:
    return _string_map(value, path, label_values=True)


def annotations(value: Any, path: str) -> list[FieldError]:
    return _string_map(value, path, label_values=False)


def object_meta(meta: dict[str, Any], name_rule: str, path: str = "metadata") -> list[FieldError]:
    """ValidateObjectMeta: the name (or generateName), labels and annotations."""
    out: list[FieldError] = []
    name = meta.get("name") or ""
    if not name:
        out.append(FieldError("FieldValueRequired", f"{path}.name", None,
                              "name or generateName is required"))
    else:
        out += [FieldError("FieldValueInvalid", f"{path}.name", name, e)
                for e in NAME_RULES[name_rule](name)]
    generate = meta.get("generateName")
    if generate:
        # As maskTrailingDash does: a prefix may end in "-" (the random suffix follows).
        probe = generate[:-1] + "a" if generate.endswith("-") and len(generate) > 1 else generate
        out += [FieldError("FieldValueInvalid", f"{path}.generateName", generate, e)
                for e in NAME_RULES[name_rule](probe)]
    out += labels(meta.get("labels"), f"{path}.labels")
    out += annotations(meta.get("annotations"), f"{path}.annotations")
    for field in ("finalizers", "ownerReferences"):
        if meta.get(field) is not None and not isinstance(meta[field], list):
            out.append(FieldError("FieldValueInvalid", f"{path}.{field}", meta[field],
                                  "must be a list"))
    return out

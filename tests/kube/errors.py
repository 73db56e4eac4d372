"""API errors as the real API server reports them: a `Status` object with a code and reason.

The messages and `details` follow k8s.io/apimachinery/pkg/api/errors, because
clients (and people reading test failures) match on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# metav1.StatusReason for each code, as NewGenericServerResponse picks them.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

OPTIMISTIC_LOCK = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


class ApiError(Exception):
    """An error answer; `status()` is the body the API server sends."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        }
        if self.reason:  # StatusReasonUnknown is "" and omitted
            body["reason"] = self.reason
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body

    def body(self) -> bytes:
        return json.dumps(self.status()).encode()


def qualified(group: str, resource: str) -> str:
    """schema.GroupResource.String(): `deployments.apps`, or `services` for the core group."""
    return f"{resource}.{group}" if group else resource


def _details(name: str, group: str, kind: str, **extra: Any) -> dict[str, Any]:
    # Every field of StatusDetails is omitempty.
    out: dict[str, Any] = {}
    if name:
        out["name"] = name
    if group:
        out["group"] = group
    if kind:
        out["kind"] = kind
    out.update({k: v for k, v in extra.items() if v})
    return out


def not_found(group: str, resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified(group, resource)} "{name}" not found',
                    _details(name, group, resource))


def not_found_path() -> ApiError:
    """What an unknown path or resource gets (NewNotFound with an empty GroupResource)."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(group: str, resource: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{qualified(group, resource)} "{name}" already exists',
                    _details(name, group, resource))


def conflict(group: str, resource: str, name: str, why: str = OPTIMISTIC_LOCK) -> ApiError:
    what = qualified(group, resource)
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {what} "{name}": {why}',
                    _details(name, group, resource))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource", {})


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415, "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
        {},
    )


def not_acceptable(accepted: list[str]) -> ApiError:
    return ApiError(406, "NotAcceptable",
                    f"only the following media types are accepted: {', '.join(accepted)}", {})


def expired(message: str) -> ApiError:
    """NewResourceExpired: what a too old resourceVersion gets (410, reason Expired)."""
    return ApiError(410, "Expired", message)


def too_large_resource_version(requested: int, current: int) -> ApiError:
    """NewTooLargeResourceVersionError: the cache did not reach the requested version."""
    return ApiError(
        504, "Timeout", f"Too large resource version: {requested}, current: {current}",
        {"causes": [{"reason": "ResourceVersionTooLarge",
                     "message": "Too large resource version"}],
         "retryAfterSeconds": 1},
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(group: str, resource: str, name: str, why: str,
              causes: list[dict[str, str]] | None = None) -> ApiError:
    what = f'{qualified(group, resource)} "{name}"' if name else qualified(group, resource)
    return ApiError(403, "Forbidden", f"{what} is forbidden: {why}",
                    _details(name, group, resource, causes=causes))


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def from_code(code: int, message: str) -> ApiError:
    """An error of any code, as NewGenericServerResponse would build it (fault injection)."""
    reason = REASONS.get(code, "Unknown")
    if code == 500:
        return internal(message)
    headers = {}
    details: dict[str, Any] = {}
    if code in (429, 503, 504):
        # The server asks the client to come back; client-go honours Retry-After.
        headers["Retry-After"] = "1"
        details["retryAfterSeconds"] = 1
    return ApiError(code, reason, message, details, headers)


@dataclass(frozen=True)
class FieldError:
    """field.Error: one problem with one field of an object."""

    type: str  # FieldValueInvalid, FieldValueRequired, FieldValueForbidden, ...
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        if self.type == "FieldValueRequired":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.type == "FieldValueForbidden":
            return "Forbidden" + (f": {self.detail}" if self.detail else "")
        if self.type == "FieldValueNotSupported":
            return f"Unsupported value: {_render(self.value)}" + (
                f": {self.detail}" if self.detail else "")
        if self.type == "FieldValueDuplicate":
            return f"Duplicate value: {_render(self.value)}"
        return f"Invalid value: {_render(self.value)}" + (f": {self.detail}" if self.detail else "")

    def error(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.type, "message": self.body(), "field": self.field}


def _render(value: Any) -> str:
    # field.Error renders strings with %q and other values with %#v-like text.
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value) if isinstance(value, int | float) else json.dumps(value, sort_keys=True)


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """NewInvalid: 422 with one cause per field error."""
    group_kind = f"{kind}.{group}" if group else kind
    texts = [e.error() for e in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, "Invalid", f'{group_kind} "{name}" is invalid: {joined}',
                    _details(name, group, kind, causes=[e.cause() for e in errors]))

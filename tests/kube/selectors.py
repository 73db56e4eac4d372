"""Label and field selectors: the `labelSelector` / `fieldSelector` query syntax and LabelSelector.

Label selector grammar (k8s.io/apimachinery/pkg/labels): requirements separated
by commas, each `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`,
`key notin (a,b)`, `key>n` or `key<n`. `!=` and `notin` also match objects that
lack the label. Field selectors are `field=v`, `field==v` or `field!=v` terms,
with `\\` escaping `,`, `=` and `!`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import validation


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if not has:
            return False
        try:
            number = int(value or "")
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(sorted(self.values))})"
        if self.op in ("gt", "lt"):
            return f"{self.key}{'>' if self.op == 'gt' else '<'}{self.values[0]}"
        return f"{self.key}{self.op}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in sorted(self.requirements, key=lambda r: r.key))


EVERYTHING = LabelSelector()

_SPECIAL = "!=(),<>"


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "=!" and text[i:i + 2] in ("==", "!="):
            out.append(text[i:i + 2])
            i += 2
        elif c in _SPECIAL:
            out.append(c)
            i += 1
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _check_key(key: str) -> None:
    errs = validation.qualified_name(key)
    if errs:
        raise SelectorError(f'unable to parse requirement: key: Invalid value: "{key}": {errs[0]}')


def _check_value(value: str) -> None:
    errs = validation.label_value(value)
    if errs:
        raise SelectorError(
            f'unable to parse requirement: values[0][{value}]: Invalid value: "{value}": {errs[0]}')


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the `labelSelector` query parameter; SelectorError on bad syntax."""
    if not text or not text.strip():
        return EVERYTHING
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def peek(k: int = 0) -> str | None:
        return toks[i + k] if i + k < len(toks) else None

    while i < len(toks):
        negate = False
        if toks[i] == "!":
            negate = True
            i += 1
        key = peek()
        if key is None or key in _SPECIAL or key in ("==", "!="):
            raise SelectorError(f"found '{key or ''}', expected: identifier")
        _check_key(key)
        i += 1
        op = peek()
        if negate:
            if op not in (None, ","):
                raise SelectorError(f"found '{op}', expected: ',' or 'end of string'")
            reqs.append(Requirement(key, "!"))
        elif op in (None, ","):
            reqs.append(Requirement(key, "exists"))
        elif op in ("=", "==", "!="):
            i += 1
            value = peek()
            if value is None or value == ",":
                value = ""  # `key=` selects the empty value
            elif value in _SPECIAL:
                raise SelectorError(f"found '{value}', expected: identifier")
            else:
                i += 1
            _check_value(value)
            reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
        elif op in ("in", "notin"):
            i += 1
            if peek() != "(":
                raise SelectorError(f"found '{peek() or ''}', expected: '('")
            i += 1
            values: list[str] = []
            while True:
                tok = peek()
                if tok is None:
                    raise SelectorError("found 'end of string', expected: ')'")
                if tok == ")":
                    i += 1
                    break
                if tok == ",":
                    i += 1
                    continue
                if tok in _SPECIAL:
                    raise SelectorError(f"found '{tok}', expected: ',', ')' or identifier")
                _check_value(tok)
                values.append(tok)
                i += 1
            if not values and op == "in":
                raise SelectorError(
                    "unable to parse requirement: values: Required value: "
                    "for 'in', 'notin' operators, values set can't be empty")
            reqs.append(Requirement(key, op, tuple(values)))
        elif op in ("<", ">"):
            i += 1
            value = peek()
            if value is None or not value.lstrip("-").isdigit():
                raise SelectorError(
                    f"unable to parse requirement: values[0]: Invalid value: \"{value or ''}\": "
                    "for 'Gt', 'Lt' operators, the value must be an integer")
            i += 1
            reqs.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
        else:
            raise SelectorError(
                f"found '{op}', expected: '=', '!=', '==', 'in', notin'")
        tok = peek()
        if tok is not None:
            if tok != ",":
                raise SelectorError(f"found '{tok}', expected: ',' or 'end of string'")
            i += 1
            if peek() is None:
                raise SelectorError("found '', expected: identifier")
    return LabelSelector(tuple(reqs))


def from_label_selector(sel: dict[str, Any] | None) -> LabelSelector:
    """metav1.LabelSelectorAsSelector: matchLabels and matchExpressions."""
    if not sel:
        return EVERYTHING
    reqs = [Requirement(k, "=", (v,)) for k, v in (sel.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in sel.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return LabelSelector(tuple(reqs))


def from_map(selector: dict[str, str] | None) -> LabelSelector:
    """A Service's selector: every key must equal."""
    return LabelSelector(tuple(Requirement(k, "=", (v,)) for k, v in (selector or {}).items()))


# --- field selectors ---

@dataclass(frozen=True)
class FieldTerm:
    field: str
    value: str
    negate: bool


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[FieldTerm, ...] = ()

    def matches(self, fields: Callable[[str], str]) -> bool:
        return all((fields(t.field) == t.value) != t.negate for t in self.terms)

    def require(self, field: str) -> str | None:
        """The value `field` must equal, if the selector pins it."""
        for t in self.terms:
            if t.field == field and not t.negate:
                return t.value
        return None

    def with_term(self, field: str, value: str) -> FieldSelector:
        return FieldSelector((*self.terms, FieldTerm(field, value, False)))


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def _unescape(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\,=!":
                raise SelectorError(f"invalid field selector: invalid escape sequence in {text!r}")
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def parse_field_selector(text: str | None) -> FieldSelector:
    if not text:
        return FieldSelector()
    terms = []
    for part in _split_unescaped(text, ","):
        if not part:
            continue
        for op in ("!=", "==", "="):
            idx = _find_unescaped(part, op)
            if idx >= 0:
                field = _unescape(part[:idx]).strip()
                value = _unescape(part[idx + len(op):])
                terms.append(FieldTerm(field, value, op == "!="))
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
    return FieldSelector(tuple(terms))


def _find_unescaped(text: str, op: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(op, i):
            return i
        i += 1
    return -1

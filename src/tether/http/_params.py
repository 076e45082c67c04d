"""What a request carries, as typed values: query parameters, headers and JSON bodies.

This is the one parser of requests. Each parameter of the route table is a :class:`Param`
that both parses its raw text (refusing anything else with ``invalid_parameter``) and describes
itself to OpenAPI, from the same fields, so ``/openapi.json`` states exactly what the server
accepts. Integers are ASCII digits only, within their bounds (no sign, no ``_``, no spaces, no
other scripts' digits); text has its length bounds and, where it has one, its pattern; a choice
is one of its values, exactly. A query parameter an operation does not declare, or one given
twice, is refused too: a misspelt ``limt=5`` never passes silently.

Bodies are JSON objects decoded into their msgspec type by :func:`decode_body`; the error names
the offending field where msgspec can tell which (a wrong type or value, a missing or an
unknown field), otherwise ``body``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tether.engine import InvalidParameter

from ._models import PATTERN_REASONS

if TYPE_CHECKING:
    from werkzeug.datastructures import Headers, MultiDict

T = TypeVar("T")

#: The longest integer text looked at (the bounds are far below it); longer is refused unread.
_MAX_DIGITS = 16


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter of an operation: where it is, how it is parsed, how it is described."""

    name: str
    description: str
    #: ``query`` or ``header``.
    location: str = "query"
    #: The value when the request does not carry it.
    default: Any = None
    #: A value to show in the document (and that Schemathesis' examples phase sends).
    example: Any = None

    @property
    def arg(self) -> str:
        """The view's keyword argument for it (``Last-Event-ID`` -> ``last_event_id``)."""
        return self.name.lower().replace("-", "_")

    def parse(self, raw: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Integer(Param):
    """A whole number from ``low`` to ``high``, in ASCII digits (absent: ``default``, which
    may be ``None`` where the view decides what absent means)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        default = self.low if self.default is None else self.default
        if not (isinstance(default, int)
                and 0 <= self.low <= default <= self.high < 10**_MAX_DIGITS):
            raise ValueError(f"{self.name}: bounds and default must be 0 <= low <= default <= high")

    def parse(self, raw: str) -> int:
        if raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS:
            value = int(raw)
            if self.low <= value <= self.high:
                return value
        raise InvalidParameter(self.name, f"must be an integer from {self.low} to {self.high}")

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.low, "maximum": self.high}
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True, kw_only=True)
class Text(Param):
    """A string of ``min_length`` to ``max_length`` characters; or, given a ``pattern`` (which
    then fixes the form and length), a string matching it, refused with ``mismatch``."""

    min_length: int = 1
    max_length: int = 256
    pattern: str | None = None
    mismatch: str = ""

    def parse(self, raw: str) -> str:
        if self.pattern is not None:
            if not _compiled(self.pattern).search(raw):
                raise InvalidParameter(self.name, self.mismatch)
        elif not self.min_length <= len(raw) <= self.max_length:
            raise InvalidParameter(
                self.name, f"must be {self.min_length} to {self.max_length} characters")
        return raw

    def schema(self) -> dict[str, Any]:
        if self.pattern is not None:
            return {"type": "string", "pattern": self.pattern}
        return {"type": "string", "minLength": self.min_length, "maxLength": self.max_length}


@dataclass(frozen=True, kw_only=True)
class Choice(Param):
    """One of ``values``, exactly (case included)."""

    values: tuple[str, ...]

    def parse(self, raw: str) -> str:
        if raw not in self.values:
            raise InvalidParameter(self.name, "must be one of " + ", ".join(self.values))
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


_patterns: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    compiled = _patterns.get(pattern)
    if compiled is None:
        compiled = _patterns[pattern] = re.compile(pattern)
    return compiled


def read_params(
    params: tuple[Param, ...], args: MultiDict[str, str], headers: Headers
) -> dict[str, Any]:
    """Every parameter's value (its default when absent), by keyword argument name.

    Query parameters not in ``params``, and any given more than once, are refused.
    """
    if args:
        declared = {p.name for p in params if p.location == "query"}
        for name in args:
            if name not in declared:
                raise InvalidParameter(name, "is not a parameter of this operation")
            if len(args.getlist(name)) > 1:
                raise InvalidParameter(name, "must be given at most once")
    values: dict[str, Any] = {}
    for p in params:
        raw = (args if p.location == "query" else headers).get(p.name)
        values[p.arg] = p.default if raw is None else p.parse(raw)
    return values


# -- bodies --------------------------------------------------------------------------------------


def check_size(body: bytes, limit: int | None) -> None:
    """Refuse a body over an operation's own ``limit`` (bytes; below the server's own limit,
    which answers 413 before the body is read)."""
    if limit is not None and len(body) > limit:
        raise InvalidParameter("body", f"must be at most {limit} bytes")


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes, limit: int | None = None) -> T:
    """Decode a JSON object body into its Struct; anything else is ``invalid_parameter``."""
    check_size(body, limit)
    if not body.strip():
        raise InvalidParameter("body", "must be a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        raise invalid_body(error) from None
    except msgspec.DecodeError as error:
        raise InvalidParameter("body", f"is not valid JSON ({error})") from None
    except UnicodeDecodeError:  # msgspec raises it for a string that is not UTF-8
        raise InvalidParameter("body", "is not valid UTF-8") from None


_FIELD = re.compile(r"field `([^`]+)`")
_REGEX = re.compile(r"^Expected `str` matching regex '(.*)'$", re.DOTALL)


def invalid_body(error: msgspec.ValidationError) -> InvalidParameter:
    """A body that did not validate, naming the top-level field at fault where msgspec says."""
    text = str(error)
    head, sep, path = text.rpartition(" - at `$.")
    if sep and path.endswith("`"):
        path = path[:-1]
        field = re.split(r"[.\[]", path, maxsplit=1)[0]
        if field == path:  # the field itself: its name is the parameter, the rest the reason
            return InvalidParameter(field, _reason(head))
        return InvalidParameter(field, text)  # inside it (``events[0]``): keep where
    found = _FIELD.search(text)  # "Object missing required field `url`", "... unknown field"
    if found:
        return InvalidParameter(found.group(1), text)
    return InvalidParameter("body", text)


def _reason(message: str) -> str:
    """msgspec's message, or the pattern's own words when the value missed a pattern."""
    mismatch = _REGEX.match(message)
    if mismatch:
        return PATTERN_REASONS.get(mismatch.group(1), message)
    return message

"""Query strings and bodies parsed into typed values; bad input is ``invalid_parameter``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import msgspec

from tether.engine import (
    DEFAULT_HISTORY,
    DEFAULT_PAGE,
    MAX_HISTORY,
    MAX_PAGE,
    InvalidParameter,
    Status,
)

from ._errors import invalid_body

if TYPE_CHECKING:
    from werkzeug.datastructures import MultiDict

T = TypeVar("T")

_STATUSES = {s.value: s for s in Status}
#: The largest ``offset`` a list accepts (documented in OpenAPI as its maximum).
MAX_OFFSET = 1_000_000_000


class ListQuery(msgspec.Struct, kw_only=True, frozen=True):
    """``GET /v1/sessions``'s query, validated."""

    status: Status | None = None
    machine_id: str | None = None
    machine_hostname: str | None = None
    limit: int = DEFAULT_PAGE
    offset: int = 0


class HistoryQuery(msgspec.Struct, kw_only=True, frozen=True):
    limit: int = DEFAULT_HISTORY
    before: str | None = None


def int_param(
    args: MultiDict[str, str], name: str, default: int, low: int, high: int | None = None
) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if not raw.isascii() or not raw.lstrip("-").isdigit() or len(raw) > 12:
        raise InvalidParameter(name, f"must be an integer {bounds}")
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise InvalidParameter(name, f"must be an integer {bounds}")
    return value


def str_param(args: MultiDict[str, str], name: str) -> str | None:
    raw = args.get(name)
    if raw is not None and (not raw or len(raw) > 256):
        raise InvalidParameter(name, "must be 1 to 256 characters")
    return raw


def list_query(args: MultiDict[str, str]) -> ListQuery:
    if not args:
        return ListQuery()
    raw_status = args.get("status")
    status = None
    if raw_status is not None:
        status = _STATUSES.get(raw_status)
        if status is None:
            raise InvalidParameter("status", "must be one of " + ", ".join(_STATUSES))
    return ListQuery(
        status=status,
        machine_id=str_param(args, "machine_id"),
        machine_hostname=str_param(args, "machine_hostname"),
        limit=int_param(args, "limit", DEFAULT_PAGE, 1, MAX_PAGE),
        offset=int_param(args, "offset", 0, 0, MAX_OFFSET),
    )


def history_query(args: MultiDict[str, str]) -> HistoryQuery:
    return HistoryQuery(
        limit=int_param(args, "limit", DEFAULT_HISTORY, 1, MAX_HISTORY),
        before=str_param(args, "before"),
    )


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes | str) -> T:
    """Decode a JSON body into its Struct; anything else is ``invalid_parameter``."""
    if not body:
        raise InvalidParameter("body", "a JSON object is required")
    try:
        return decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise invalid_body(error) from None
    except UnicodeDecodeError:  # msgspec raises it for a string that is not UTF-8
        raise InvalidParameter("body", "is not valid UTF-8") from None

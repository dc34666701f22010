"""JSON in and out.

Out: orjson, with ``Decimal`` written as an exact JSON number (``729.98``, never
``729.9800000001``) and times as RFC 3339 with an offset, to the second.
In: the standard library parser with ``Decimal`` for every non-integer number,
so money never passes through a binary float; NaN, Infinity and duplicate keys
are refused.
"""

import json
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from shared.money import money_text


class JSONInputError(ValueError):
    """The body is not JSON we accept; the message says why."""


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return orjson.Fragment(money_text(value))
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(value: object) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_OMIT_MICROSECONDS)


def _refuse_constant(name: str) -> object:
    raise JSONInputError(f"{name} is not a number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONInputError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _bounded_int(text: str) -> int:
    # Longer integers than any money or order number are refused up front
    # rather than paying for big-int conversion of a hostile payload.
    if len(text.lstrip("-")) > 64:
        raise JSONInputError("number too long")
    return int(text)


# No amount we read is anywhere near 10**64 or needs more than two decimals:
# exponents past this are refused before they reach arithmetic, where
# libmpdec raises InvalidOperation (not a ValueError) on quantize or overflow.
_MAX_EXPONENT = 1000


def _bounded_decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # an exponent beyond libmpdec's own range
        raise JSONInputError("number out of range") from exc
    if value and abs(value.adjusted()) > _MAX_EXPONENT:
        raise JSONInputError("number out of range")
    return value


def loads_exact(body: bytes | str) -> Any:
    """Parse a request body; raise JSONInputError with a reason on any problem."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        return json.loads(
            text,
            parse_float=_bounded_decimal,
            parse_int=_bounded_int,
            parse_constant=_refuse_constant,
            object_pairs_hook=_no_duplicate_keys,
        )
    except JSONInputError:
        raise
    except UnicodeDecodeError as exc:
        raise JSONInputError("body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise JSONInputError("JSON nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError and int() limits
        raise JSONInputError("malformed JSON") from exc

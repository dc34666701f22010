"""Money: exact decimals with two places, never binary floats."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")
# NUMERIC(18, 2) in the schema: sixteen integer digits.
MAX_AMOUNT = Decimal("9999999999999999.99")


def round_half_up(value: Decimal) -> Decimal:
    """Round to cents, half away from zero for positives: 729.975 -> 729.98."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def parse_amount(value: object) -> Decimal | None:
    """A positive sum with at most two decimals, or None when it is not one.

    Accepts ``Decimal`` (JSON numbers parsed exactly) and ``int``; rejects
    bools, floats, strings, NaN, infinities, zero, negatives, more than two
    decimals and anything beyond the column's range.
    """
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    try:
        amount = Decimal(value)
        if not amount.is_finite() or amount <= 0 or amount > MAX_AMOUNT:
            return None
        if amount != amount.quantize(CENT):
            return None
    except InvalidOperation:
        return None
    return amount.quantize(CENT)


def money_text(value: Decimal) -> str:
    """The JSON number text of an amount: ``729.98``, ``500.5``, ``500``.

    Plain notation always (never ``5E+2``), trailing zeros dropped.
    """
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text

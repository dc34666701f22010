"""Order numbers: ASCII digit strings that pass the Luhn check."""

MAX_ORDER_DIGITS = 64
_ASCII_DIGITS = frozenset("0123456789")


def is_digits(text: str) -> bool:
    """True for a non-empty string of ASCII digits only.

    ``str.isdigit`` is not enough: it accepts ``"١٢٣"`` and ``"²"``.
    """
    return bool(text) and all(ch in _ASCII_DIGITS for ch in text)


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of an ASCII digit string (callers check ``is_digits``)."""
    total = 0
    for position, ch in enumerate(reversed(number)):
        digit = ord(ch) - 48
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def is_order_number(text: str) -> bool:
    """A valid order number: 1..MAX_ORDER_DIGITS ASCII digits passing Luhn."""
    return len(text) <= MAX_ORDER_DIGITS and is_digits(text) and luhn_valid(text)


def with_check_digit(prefix: str) -> str:
    """Append the Luhn check digit to a digit string (tests, demos, benchmarks)."""
    for check in "0123456789":
        if luhn_valid(prefix + check):
            return prefix + check
    raise AssertionError("unreachable: one check digit always fits")

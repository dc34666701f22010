"""Order numbers, money and JSON: the exact values everything else relies on."""

from decimal import Decimal

import pytest

from shared.jsonio import JSONInputError, dumps, loads_exact
from shared.luhn import is_order_number, with_check_digit
from shared.money import money_text, parse_amount, round_half_up


@pytest.mark.parametrize(
    "number", ["79927398713", "12345678903", "2377225624", "0", "00000000000000000000000000000000"]
)
def test_luhn_valid_numbers(number: str) -> None:
    assert is_order_number(number)


@pytest.mark.parametrize(
    "number", ["79927398710", "", " 79927398713", "7992739871३", "١٢٣", "12a", "1" * 65]
)
def test_luhn_invalid_numbers(number: str) -> None:
    assert not is_order_number(number)


def test_with_check_digit_always_valid() -> None:
    assert all(is_order_number(with_check_digit(str(n))) for n in range(1000))


@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        ("729.975", "729.98"),
        ("27.245", "27.25"),
        ("0.004", "0.00"),
        ("0.005", "0.01"),
        ("1.994999", "1.99"),
    ],
)
def test_round_half_up(value: str, rounded: str) -> None:
    assert round_half_up(Decimal(value)) == Decimal(rounded)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("729.98"), "729.98"),
        (Decimal("500.50"), "500.5"),
        (Decimal("500.00"), "500"),
        (Decimal("0.00"), "0"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0.10"), "0.1"),
    ],
)
def test_money_text_is_plain_and_short(value: Decimal, text: str) -> None:
    assert money_text(value) == text


def test_dumps_writes_decimals_exactly() -> None:
    assert dumps({"sum": Decimal("729.98"), "n": Decimal("0.1")}) == b'{"sum":729.98,"n":0.1}'


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (Decimal("1"), Decimal("1.00")),
        (5, Decimal("5.00")),
        (Decimal("0.01"), Decimal("0.01")),
        (Decimal("10.50"), Decimal("10.50")),
    ],
)
def test_parse_amount_accepts_positive_cents(value: object, parsed: Decimal) -> None:
    assert parse_amount(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        Decimal("0"),
        Decimal("-1"),
        Decimal("0.001"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1E+400"),
        1.5,
        "1",
        True,
        None,
    ],
)
def test_parse_amount_refuses_the_rest(value: object) -> None:
    assert parse_amount(value) is None


def test_loads_exact_parses_numbers_without_floats() -> None:
    assert loads_exact(b'{"a": 0.1, "b": 2}') == {"a": Decimal("0.1"), "b": 2}


@pytest.mark.parametrize(
    "body",
    [
        b"NaN",
        b'{"a": Infinity}',
        b'{"a": 1, "a": 2}',
        b"{",
        b"\xff",
        b"[" * 10000 + b"]" * 10000,
        b"1" * 100,
        # exponents past libmpdec's range, and merely absurd ones
        b"1E+99999999999999999999",
        b"1e-99999999999999999999",
        b'{"a": 1.5e1001}',
    ],
)
def test_loads_exact_refuses_with_a_reason(body: bytes) -> None:
    with pytest.raises(JSONInputError) as raised:
        loads_exact(body)
    assert str(raised.value)

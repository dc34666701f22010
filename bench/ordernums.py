"""Order numbers for the benchmark: distinct prefixes per use, Luhn check digit appended."""

from collections.abc import Iterator


def luhn_complete(payload: str) -> str:
    """``payload`` plus the check digit that makes it pass Luhn."""
    total = 0
    for position, ch in enumerate(reversed(payload)):
        digit = ord(ch) - 48
        if position % 2 == 0:  # doubled once the check digit is appended
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return payload + str((10 - total % 10) % 10)


def numbers(prefix: str, count: int) -> Iterator[str]:
    for i in range(count):
        yield luhn_complete(f"{prefix}{i:010d}")

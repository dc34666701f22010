"""A customer's flow against a running stack, standard library only.

``make compose-check`` pipes this file into ``python -`` inside the API container,
so it reaches the API and the simulator the way the containers do, whatever the
engine's networking. Addresses come from the container's own settings
(``RUN_ADDRESS``, ``ACCRUAL_SYSTEM_ADDRESS``). One JSON object on stdout:

    python - flow             register a purchase, register, upload, wait for
                              PROCESSED, balance, withdraw, balance, withdrawals
    python - balance TOKEN    the balance that token sees (status and body)
    python - load N           N purchases uploaded by a new customer, until all final
"""

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

API = "http://127.0.0.1:" + os.environ.get("RUN_ADDRESS", ":8080").rsplit(":", 1)[1]
ACCRUAL = os.environ.get("ACCRUAL_SYSTEM_ADDRESS", "http://127.0.0.1:8081").rstrip("/")
if "://" not in ACCRUAL:
    ACCRUAL = "http://" + ACCRUAL
# The simulator's demo rule: "Bork" earns 10 % of the price.
PURCHASE = {"description": "Чайник Bork", "price": 7000}
EARNED = Decimal("700")


def call(
    method: str, url: str, body: object = None, token: str | None = None, text: str | None = None
) -> tuple[int, dict[str, str], Any]:
    data = None
    headers = {}
    if text is not None:
        data, headers["Content-Type"] = text.encode(), "text/plain"
    elif isinstance(body, str):  # JSON text as is: money without a float on the way
        data, headers["Content-Type"] = body.encode(), "application/json"
    elif body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if token:
        headers["Authorization"] = token
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, answer_headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, raw = error.code, dict(error.headers), error.read()
    parsed = json.loads(raw, parse_float=Decimal) if raw.strip() else None
    return status, answer_headers, parsed


def expect(what: str, got: object, wanted: object) -> None:
    if got != wanted:
        raise SystemExit(f"{what}: got {got!r}, expected {wanted!r}")


def order_number() -> str:
    """A fresh Luhn-valid number."""
    digits = [int(d) for d in str(secrets.randbelow(10**14) + 10**14)]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if index % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def purchase(number: str) -> None:
    status, _, _ = call("POST", f"{ACCRUAL}/api/orders", {"order": number, "goods": [PURCHASE]})
    expect(f"simulator registers purchase {number}", status, 202)


def register() -> str:
    login = "compose-check-" + secrets.token_hex(6)
    status, headers, _ = call(
        "POST", f"{API}/api/user/register", {"login": login, "password": secrets.token_hex(12)}
    )
    expect("register", status, 200)
    return headers["Authorization"]


def wait_final(token: str, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, orders = call("GET", f"{API}/api/user/orders", token=token)
        if (
            status == 200
            and len(orders) == count
            and all(o["status"] in ("PROCESSED", "INVALID") for o in orders)
        ):
            return list(orders)
        if time.monotonic() > deadline:
            raise SystemExit(f"orders not final after {timeout:.0f} s: {status} {orders}")
        time.sleep(0.3)


def flow() -> dict[str, Any]:
    started = time.monotonic()
    number = order_number()
    purchase(number)
    token = register()
    status, _, _ = call("POST", f"{API}/api/user/orders", token=token, text=number)
    expect("upload", status, 202)
    [order] = wait_final(token, 1)
    expect(
        "order",
        (order["number"], order["status"], order.get("accrual")),
        (number, "PROCESSED", EARNED),
    )
    status, _, balance = call("GET", f"{API}/api/user/balance", token=token)
    expect("balance after accrual", (status, balance), (200, {"current": EARNED, "withdrawn": 0}))
    spend = Decimal("250.50")
    status, _, _ = call(
        "POST",
        f"{API}/api/user/balance/withdraw",
        f'{{"order": "{order_number()}", "sum": {spend}}}',
        token=token,
    )
    expect("withdraw", status, 200)
    status, _, balance = call("GET", f"{API}/api/user/balance", token=token)
    expect(
        "balance after withdrawal",
        (status, balance),
        (200, {"current": EARNED - spend, "withdrawn": spend}),
    )
    status, _, withdrawals = call("GET", f"{API}/api/user/withdrawals", token=token)
    expect("withdrawals", (status, [w["sum"] for w in withdrawals]), (200, [spend]))
    return {
        "token": token,
        "order": number,
        "accrual": str(EARNED),
        "balance": {k: str(v) for k, v in balance.items()},
        "seconds": round(time.monotonic() - started, 2),
    }


def load(count: int) -> dict[str, Any]:
    started = time.monotonic()
    token = register()
    for _ in range(count):
        number = order_number()
        purchase(number)
        status, _, _ = call("POST", f"{API}/api/user/orders", token=token, text=number)
        expect("upload", status, 202)
    orders = wait_final(token, count)
    processed = sum(o["status"] == "PROCESSED" and o.get("accrual") == EARNED for o in orders)
    expect("orders credited", processed, count)
    status, _, balance = call("GET", f"{API}/api/user/balance", token=token)
    expect("balance", (status, balance["current"]), (200, EARNED * count))
    return {
        "orders": count,
        "processed": processed,
        "seconds": round(time.monotonic() - started, 2),
    }


def main(argv: list[str]) -> None:
    match argv:
        case ["flow"]:
            result = flow()
        case ["balance", token]:
            status, _, body = call("GET", f"{API}/api/user/balance", token=token)
            result = {"status": status, "balance": {k: str(v) for k, v in (body or {}).items()}}
        case ["load", count]:
            result = load(int(count))
        case _:
            raise SystemExit(__doc__)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])

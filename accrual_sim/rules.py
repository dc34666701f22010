"""Reward rules, goods, and the accrual an order's goods earn."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from shared.money import round_half_up

RewardType = Literal["%", "pt"]
_HUNDRED = Decimal(100)


class InvalidPayload(ValueError):
    """A request body the simulator refuses with 400; the message says why."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Goods whose description contains ``match`` earn ``reward`` % of the price or points."""

    match: str
    reward: Decimal
    reward_type: RewardType

    def earned(self, price: Decimal) -> Decimal:
        if self.reward_type == "%":
            return price * self.reward / _HUNDRED
        return self.reward


@dataclass(frozen=True, slots=True)
class Good:
    description: str
    price: Decimal


def _number(value: object, what: str) -> Decimal:
    # JSON numbers arrive as int or Decimal (shared.jsonio.loads_exact); bool is an int too.
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidPayload(f"{what} must be a number")
    number = Decimal(value)
    if not number.is_finite():
        raise InvalidPayload(f"{what} must be finite")
    if number < 0:
        raise InvalidPayload(f"{what} must not be negative")
    return number


def _object(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidPayload(f"{what} must be a JSON object")
    return payload


def parse_rule(payload: Any) -> Rule:
    """``{"match": "Bork", "reward": 10, "reward_type": "%"}`` -> Rule."""
    body = _object(payload, "rule")
    match = body.get("match")
    if not isinstance(match, str) or not match.strip():
        raise InvalidPayload("match must be a non-empty string")
    reward = _number(body.get("reward"), "reward")
    reward_type = body.get("reward_type")
    if reward_type == "%":
        return Rule(match, reward, "%")
    if reward_type == "pt":
        return Rule(match, reward, "pt")
    raise InvalidPayload('reward_type must be "%" or "pt"')


def parse_goods(payload: Any) -> tuple[Good, ...]:
    """``[{"description": "Чайник Bork", "price": 7000}, ...]`` -> goods."""
    if not isinstance(payload, list):
        raise InvalidPayload("goods must be a JSON array")
    goods = []
    for item in payload:
        good = _object(item, "a good")
        description = good.get("description")
        if not isinstance(description, str):
            raise InvalidPayload("description must be a string")
        goods.append(Good(description, _number(good.get("price"), "price")))
    return tuple(goods)


class RuleBook:
    """The registered rules, one per match text."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rule: Rule) -> bool:
        """Register ``rule``; False when its match is already registered."""
        if rule.match in self._rules:
            return False
        self._rules[rule.match] = rule
        return True

    def accrual(self, goods: Sequence[Good]) -> Decimal | None:
        """The rounded reward for ``goods``, or None when no rule matches any of them."""
        return compute_accrual(goods, self._rules.values())


def compute_accrual(goods: Sequence[Good], rules: Iterable[Rule]) -> Decimal | None:
    """Sum every matching rule over every good, then round half-up once.

    Rounding the sum, not each term, is what turns 729.975 into 729.98.
    """
    rules = tuple(rules)
    total = Decimal(0)
    matched = False
    for good in goods:
        for rule in rules:
            if rule.match in good.description:
                total += rule.earned(good.price)
                matched = True
    return round_half_up(total) if matched else None

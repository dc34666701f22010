"""The simulator's state: rules, orders, counters, rate limit and fault dice."""

import random
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from accrual_sim.limiter import RateLimiter
from accrual_sim.orders import Order, OrderBook, parse_order
from accrual_sim.rules import InvalidPayload, Rule, RuleBook, parse_rule
from accrual_sim.settings import SimSettings
from accrual_sim.stats import Stats
from shared.jsonio import loads_exact

log = structlog.get_logger("accrual_sim")

Clock = Callable[[], float]

DEMO_RULES = (
    Rule("Bork", Decimal(10), "%"),
    Rule("Pringles", Decimal(10), "%"),
    Rule("Coca-Cola", Decimal("12.5"), "pt"),
)


class Simulator:
    def __init__(
        self, settings: SimSettings, clock: Clock = time.monotonic, rng: random.Random | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng if rng is not None else random.Random(settings.random_seed)
        self.stats = Stats()
        self.rules = RuleBook()
        self.orders = OrderBook(settings.invalid_when_nothing)
        self.limiter = (
            RateLimiter(settings.rate_limit, settings.rate_window, settings.pause_grace, self.stats)
            if settings.rate_limit > 0
            else None
        )

    def add_rule(self, rule: Rule) -> bool:
        """Register a rule; False when its match is taken."""
        if not self.rules.add(rule):
            return False
        self.stats.rules_registered += 1
        log.debug(
            "rule registered",
            match=rule.match,
            reward=str(rule.reward),
            reward_type=rule.reward_type,
        )
        return True

    def add_order(self, payload: Any) -> Order | None:
        """Register a purchase from its JSON; None when already registered.

        Raises InvalidPayload for a malformed body or a number failing Luhn.
        """
        number, goods = parse_order(payload)
        order = self.orders.register(number, goods, self.rules, self.clock())
        if order is None:
            return None
        self.stats.orders_registered += 1
        log.debug(
            "order registered",
            order=number,
            goods=len(goods),
            accrual=None if order.accrual is None else str(order.accrual),
            final_status=order.final_status,
        )
        return order

    def reset_stats(self) -> None:
        """Zero the counters and reopen the rate-limit window, for a fresh run."""
        self.stats.reset()
        if self.limiter is not None:
            self.limiter.reset()

    def seed(self, data: Any) -> None:
        """Register a seed: a list of rules, or ``{"goods": [...], "orders": [...]}``.

        Duplicates are skipped, so a seed may overlap the demo rules.
        """
        if isinstance(data, list):
            data = {"goods": data}
        if not isinstance(data, dict) or set(data) - {"goods", "orders"}:
            raise InvalidPayload('a seed is a list of rules or {"goods": [...], "orders": [...]}')
        rules, orders = data.get("goods", []), data.get("orders", [])
        if not isinstance(rules, list) or not isinstance(orders, list):
            raise InvalidPayload("seed goods and orders must be JSON arrays")
        for item in rules:
            self.add_rule(parse_rule(item))
        for item in orders:
            self.add_order(item)

    def seed_from_settings(self) -> None:
        if self.settings.seed_demo:
            for rule in DEMO_RULES:
                self.add_rule(rule)
        if self.settings.seed_file:
            self.seed(loads_exact(Path(self.settings.seed_file).read_bytes()))
        if len(self.rules) or len(self.orders):
            log.info("seeded", rules=len(self.rules), orders=len(self.orders))

"""The worker's counters, kept in a Prometheus registry of the worker's own.

One source of truth: the same objects feed ``/metrics`` on the worker's ops
port, the tests, and the summary logged at stop. Label children are bound
once, so recording is a dict lookup and a locked add.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, new_registry
from shared.statuses import OrderStatus

# Outcomes of one accrual HTTP attempt (retries count one each).
ACCRUAL_OUTCOMES = ("200", "204", "429", "5xx", "error")
# Why an answer was refused (worker.accrual_client.MalformedAnswer.reason).
MALFORMED_REASONS = ("too_large", "encoding", "json", "shape", "order", "accrual", "status")


def accrual_outcome(status: int | None) -> str:
    """The ``outcome`` label of an answer; None is a transport error."""
    if status in (200, 204, 429):
        return str(status)
    if status is not None and 500 <= status <= 599:
        return "5xx"
    return "error"  # no answer, or one the contract (docs/accrual.md) does not know


class WorkerStats:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        calls = Counter(
            "gophermart_accrual_requests",
            "Accrual system HTTP attempts by outcome "
            "(200, 204, 429, 5xx, error = transport failure or unexpected status).",
            ("outcome",),
            registry=self.registry,
        )
        latency = Histogram(
            "gophermart_accrual_request_duration_seconds",
            "Accrual system HTTP attempt latency by outcome.",
            ("outcome",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._calls = {o: (calls.labels(o), latency.labels(o)) for o in ACCRUAL_OUTCOMES}
        malformed = Counter(
            "gophermart_accrual_malformed_answers",
            "Answers refused: too_large (over the size cap, compressed or not), encoding "
            "(unknown or broken Content-Encoding), json, shape (not the documented object), "
            "order (about another order), accrual (out of range), status (a redirect or "
            "a status the contract does not have).",
            ("reason",),
            registry=self.registry,
        )
        self._malformed = {r: malformed.labels(r) for r in MALFORMED_REASONS}
        self._pauses = Counter(
            "gophermart_accrual_pauses",
            "Fleet-wide pauses this replica recorded after a 429 (not those it heard of).",
            registry=self.registry,
        )
        self._pause = Gauge(
            "gophermart_accrual_pause_seconds",
            "Seconds left of the fleet-wide pause after a 429, as this replica knows it.",
            registry=self.registry,
        )
        self._rate = Gauge(
            "gophermart_accrual_rate_limit_per_minute",
            "Accrual requests per minute the last 429 announced (0 = no limit known).",
            registry=self.registry,
        )
        self._claim_batch = Histogram(
            "gophermart_worker_claim_batch_size",
            "Orders claimed per claim query.",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        applied = Counter(
            "gophermart_worker_orders_applied",
            "Accrual answers written back to orders, by the order's new status.",
            ("status",),
            registry=self.registry,
        )
        self._applied: dict[str, Counter] = {s: applied.labels(s) for s in OrderStatus}
        self._rescheduled = Counter(
            "gophermart_worker_orders_rescheduled",
            "Orders put back for later after a failed or paused accrual call.",
            registry=self.registry,
        )
        self._set_aside = Counter(
            "gophermart_worker_orders_set_aside",
            "Answers that could not be applied (e.g. a balance would overflow): the order "
            "is put back with its reason in orders.problem, and its batch goes on.",
            registry=self.registry,
        )

    # -- recording ------------------------------------------------------------

    def accrual_call(self, status: int | None, seconds: float) -> None:
        """One accrual attempt: its HTTP status (None on transport error) and duration."""
        count, latency = self._calls[accrual_outcome(status)]
        count.inc()
        latency.observe(seconds)

    def malformed_answer(self, reason: str) -> None:
        self._malformed.get(reason, self._malformed["shape"]).inc()

    def paused(self) -> None:
        self._pauses.inc()

    def set_aside(self) -> None:
        self._set_aside.inc()

    def claimed(self, orders: int) -> None:
        self._claim_batch.observe(orders)

    def applied(self, status: str) -> None:
        child = self._applied.get(status)
        if child is not None:
            child.inc()

    def rescheduled(self) -> None:
        self._rescheduled.inc()

    def gate(self, pause_seconds: float, rate_per_minute: int | None) -> None:
        self._pause.set(pause_seconds)
        self._rate.set(rate_per_minute or 0)

    # -- reading (tests and the summary at stop) ------------------------------

    def _read(self, name: str, **labels: str) -> int:
        return int(self.registry.get_sample_value(name, labels) or 0)

    def calls(self, outcome: str) -> int:
        return self._read("gophermart_accrual_requests_total", outcome=outcome)

    def applied_count(self, status: str) -> int:
        return self._read("gophermart_worker_orders_applied_total", status=status)

    @property
    def malformed_answers(self) -> int:
        return sum(self.malformed(r) for r in MALFORMED_REASONS)

    def malformed(self, reason: str) -> int:
        return self._read("gophermart_accrual_malformed_answers_total", reason=reason)

    @property
    def set_aside_count(self) -> int:
        return self._read("gophermart_worker_orders_set_aside_total")

    @property
    def rate_per_minute(self) -> int:
        return self._read("gophermart_accrual_rate_limit_per_minute")

    def summary(self) -> dict[str, int]:
        return {
            **{f"calls_{o}": self.calls(o) for o in ACCRUAL_OUTCOMES},
            **{f"applied_{s.lower()}": self.applied_count(s) for s in OrderStatus},
            "rescheduled": self._read("gophermart_worker_orders_rescheduled_total"),
            "malformed": self.malformed_answers,
            "set_aside": self.set_aside_count,
            "pauses": self._read("gophermart_accrual_pauses_total"),
            "claims": self._read("gophermart_worker_claim_batch_size_count"),
            "claimed_orders": self._read("gophermart_worker_claim_batch_size_sum"),
        }

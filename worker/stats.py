"""In-process counters, cheap to bump; a metrics exporter can read them later."""

from dataclasses import dataclass


@dataclass(slots=True)
class WorkerStats:
    # Accrual calls by outcome (one per HTTP attempt, retries included).
    calls_200: int = 0
    calls_204: int = 0
    calls_429: int = 0
    calls_5xx: int = 0
    calls_error: int = 0  # network errors, timeouts, unexpected statuses
    malformed_answers: int = 0
    # Orders written back, by the status they now have.
    applied_new: int = 0
    applied_processing: int = 0
    applied_invalid: int = 0
    applied_processed: int = 0
    rescheduled: int = 0  # failed or paused calls put back for later
    claims: int = 0
    claimed_orders: int = 0
    # The fleet-wide pause as this process knows it (seconds left at last update).
    pause_seconds: float = 0.0
    rate_per_minute: int = 0  # 0: no limit known

    def count_applied(self, status: str) -> None:
        if status == "PROCESSED":
            self.applied_processed += 1
        elif status == "INVALID":
            self.applied_invalid += 1
        elif status == "PROCESSING":
            self.applied_processing += 1
        else:
            self.applied_new += 1

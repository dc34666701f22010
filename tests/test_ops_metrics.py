"""Prometheus metrics: request counts by route template, outcomes, orders by status."""

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.metrics import ApiMetrics
from api.state import POOL
from shared.settings import ApiSettings
from tests.helpers import credit, register
from worker.stats import WorkerStats, accrual_outcome

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: TestClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await response.text())


def with_name(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples if sample == name]


async def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    token = await register(client, "alice")
    for _ in range(3):
        await client.get("/api/user/orders", headers={"Authorization": token})
    client.session.cookie_jar.clear()
    await client.get("/api/user/orders")
    samples = await scrape(client)
    labels = {"method": "GET", "route": "/api/user/orders"}
    assert value(samples, "gophermart_http_requests_total", **labels, status="204") == 3
    assert value(samples, "gophermart_http_requests_total", **labels, status="401") == 1
    assert (
        value(samples, "gophermart_http_request_duration_seconds_count", **labels, status="204")
        == 3
    )
    assert (
        value(
            samples,
            "gophermart_http_requests_total",
            method="POST",
            route="/api/user/register",
            status="200",
        )
        == 1
    )


async def test_unmatched_paths_share_one_label_value(client: TestClient) -> None:
    for index in range(5):
        await client.get(f"/wp-admin/{index}.php")
    await client.delete("/api/user/orders")  # 405: no route for this method
    samples = await scrape(client)
    unmatched = {"method": "unmatched", "route": "unmatched"}
    assert value(samples, "gophermart_http_requests_total", **unmatched, status="404") == 5
    assert value(samples, "gophermart_http_requests_total", **unmatched, status="405") == 1
    routes = {labels["route"] for labels in with_name(samples, "gophermart_http_requests_total")}
    assert not any("wp-admin" in route for route in routes)


async def test_withdrawal_outcomes_are_counted(client: TestClient, pool: asyncpg.Pool) -> None:
    token = await register(client, "alice")
    bob = await register(client, "bob")
    await credit(pool, "alice", "100", "9278923470")

    async def withdraw(auth: str, order: str, amount: int) -> int:
        response = await client.post(
            "/api/user/balance/withdraw",
            headers={"Authorization": auth},
            json={"order": order, "sum": amount},
        )
        return response.status

    assert await withdraw(token, "2377225624", 60) == 200
    assert await withdraw(token, "2377225624", 60) == 200  # a safe retry
    assert await withdraw(token, "12345678903", 60) == 402
    assert await withdraw(bob, "2377225624", 60) == 409
    samples = await scrape(client)
    assert value(samples, "gophermart_withdrawals_total", outcome="done") == 2
    assert value(samples, "gophermart_withdrawals_total", outcome="insufficient") == 1
    assert value(samples, "gophermart_withdrawals_total", outcome="conflict") == 1


async def test_upload_outcomes_are_counted(client: TestClient) -> None:
    alice = await register(client, "alice")
    bob = await register(client, "bob")

    async def upload(auth: str, number: str) -> int:
        response = await client.post(
            "/api/user/orders",
            data=number,
            headers={"Authorization": auth, "Content-Type": "text/plain"},
        )
        return response.status

    assert [
        await upload(alice, "12345678903"),
        await upload(alice, "12345678903"),
        await upload(bob, "12345678903"),
        await upload(bob, "12345678904"),
        await upload(bob, "9278923470"),
    ] == [202, 200, 409, 422, 202]
    samples = await scrape(client)
    expected = {"accepted": 2, "duplicate": 1, "conflict": 1, "invalid": 1}
    for outcome, count in expected.items():
        assert value(samples, "gophermart_order_uploads_total", outcome=outcome) == count


async def test_every_outcome_is_exported_from_the_start(client: TestClient) -> None:
    samples = await scrape(client)
    for outcome in ("done", "insufficient", "conflict"):
        assert value(samples, "gophermart_withdrawals_total", outcome=outcome) == 0


async def test_orders_gauge_counts_the_database_at_scrape_time(
    client: TestClient, pool: asyncpg.Pool
) -> None:
    token = await register(client, "alice")
    await client.post(
        "/api/user/orders",
        data="12345678903",
        headers={"Authorization": token, "Content-Type": "text/plain"},
    )
    await credit(pool, "alice", "5", "9278923470")
    samples = await scrape(client)
    counts = {
        status: value(samples, "gophermart_orders", status=status)
        for status in ("NEW", "PROCESSING", "INVALID", "PROCESSED")
    }
    assert counts == {"NEW": 1, "PROCESSING": 0, "INVALID": 0, "PROCESSED": 1}


async def test_metrics_still_answer_when_the_database_is_down(client: TestClient) -> None:
    await client.get("/healthz")
    await client.app[POOL].close()
    samples = await scrape(client)
    # The database gauge is left out rather than reported as zeros.
    assert with_name(samples, "gophermart_orders") == []
    assert (
        value(
            samples, "gophermart_http_requests_total", method="GET", route="/healthz", status="200"
        )
        == 1
    )


async def test_many_apps_in_one_process_keep_separate_counts(
    aiohttp_client: Any, api_settings: ApiSettings
) -> None:
    first: TestClient = await aiohttp_client(create_app(api_settings))
    second: TestClient = await aiohttp_client(create_app(api_settings))
    await first.get("/healthz")
    await first.get("/healthz")
    await second.get("/healthz")
    healthz = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(await scrape(first), "gophermart_http_requests_total", **healthz) == 2
    assert value(await scrape(second), "gophermart_http_requests_total", **healthz) == 1


def test_label_children_are_bound_once_per_route_and_status() -> None:
    metrics = ApiMetrics(CollectorRegistry())
    for _ in range(3):
        metrics.observe("GET", "/api/user/balance", 200, 0.01)
    metrics.observe("POST", "/api/user/balance/withdraw", 402, 0.01)
    assert len(metrics._children) == 2
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "gophermart_withdrawals_total", outcome="insufficient") == 1
    assert (
        value(
            samples,
            "gophermart_http_request_duration_seconds_bucket",
            method="GET",
            route="/api/user/balance",
            status="200",
            le="0.01",
        )
        == 3
    )


def test_accrual_outcome_labels() -> None:
    assert [accrual_outcome(s) for s in (200, 204, 429, 500, 503, 404, None)] == [
        "200",
        "204",
        "429",
        "5xx",
        "5xx",
        "error",
        "error",
    ]


def test_worker_metrics_record_calls_claims_pauses_and_applied_orders() -> None:
    stats = WorkerStats()
    WorkerStats()  # a second set in the same process does not clash
    stats.accrual_call(200, 0.02)
    stats.accrual_call(429, 0.01)
    stats.accrual_call(None, 5.0)
    stats.claimed(3)
    stats.claimed(0)
    stats.gate(12.5, 60)
    stats.applied("PROCESSED")
    stats.applied("NEW")
    stats.rescheduled()
    samples = parse(generate_latest(stats.registry).decode())
    assert value(samples, "gophermart_accrual_requests_total", outcome="200") == 1
    assert value(samples, "gophermart_accrual_requests_total", outcome="429") == 1
    assert value(samples, "gophermart_accrual_requests_total", outcome="error") == 1
    assert value(samples, "gophermart_accrual_requests_total", outcome="5xx") == 0
    assert value(samples, "gophermart_accrual_request_duration_seconds_count", outcome="error") == 1
    assert value(samples, "gophermart_worker_claim_batch_size_count") == 2
    assert value(samples, "gophermart_worker_claim_batch_size_sum") == 3
    assert value(samples, "gophermart_accrual_pause_seconds") == 12.5
    assert value(samples, "gophermart_accrual_rate_limit_per_minute") == 60
    assert value(samples, "gophermart_worker_orders_applied_total", status="PROCESSED") == 1
    assert value(samples, "gophermart_worker_orders_applied_total", status="INVALID") == 0
    assert value(samples, "gophermart_worker_orders_rescheduled_total") == 1
    assert stats.summary()["calls_429"] == 1 and stats.rate_per_minute == 60

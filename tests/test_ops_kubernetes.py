"""deploy/k8s: valid for a current Kubernetes, and consistent with the code (no cluster).

Every object is validated against the Kubernetes 1.37 schemas (kubernetes-validate,
strict: unknown fields fail) or, for KEDA's, against its CRD schemas in
tests/schemas. Then what a schema cannot see: every variable is a real setting,
probes and scrape annotations hit the ports the processes listen on, selectors
select, resources cover the benchmark's memory figures, the connection budget fits
PostgreSQL's default, and the autoscaler's backlog query counts what a worker can
claim, through the `orders_due` index, on a real PostgreSQL.
"""

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.settings import split_host_port
from tests.test_ops_containers import SCRIPTS, SETTINGS_OF, env_names

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "k8s" / "base"
KUBERNETES = "1.37.0"
KEDA_SCHEMAS = Path(__file__).parent / "schemas" / "keda.sh"
# PostgreSQL's default max_connections (100) less superuser_reserved_connections (3).
PG_DEFAULT_CONNECTIONS = 97
Manifest = dict[str, Any]


def assemble(base: Path) -> list[Manifest]:
    """What `kubectl kustomize` renders for a base of plain resources."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert set(kustomization) == {"apiVersion", "kind", "resources"}, (
        "the base is plain resources: transformers belong in overlays"
    )
    documents: list[Manifest] = []
    for resource in kustomization["resources"]:
        documents.extend(d for d in yaml.safe_load_all((base / resource).read_text()) if d)
    return documents


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return assemble(BASE)


def key(doc: Manifest) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    [found] = [d for d in manifests if key(d) == (kind, name)]
    return found


def container(deployment: Manifest) -> Manifest:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", [])}


def test_every_resource_of_the_base_is_rendered() -> None:
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]) == files


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_same_objects(manifests: list[Manifest]) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(BASE)], check=True, capture_output=True, text=True
    ).stdout
    by_key = {key(d): d for d in yaml.safe_load_all(rendered) if d}
    assert by_key == {key(d): d for d in manifests}


def test_every_object_is_valid_for_a_current_kubernetes(manifests: list[Manifest]) -> None:
    kinds = set()
    for doc in manifests:
        if doc["apiVersion"].startswith("keda.sh/"):
            schema = json.loads((KEDA_SCHEMAS / f"{doc['kind'].lower()}_v1alpha1.json").read_text())
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        kinds.add(doc["kind"])
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
    }


def test_validation_catches_a_misspelt_field(manifests: list[Manifest]) -> None:
    api = json.loads(json.dumps(find(manifests, "Deployment", "gophermart-api")))
    container(api)["readinesProbe"] = container(api).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES, strict=True)
    scaled = json.loads(json.dumps(find(manifests, "ScaledObject", "gophermart-worker")))
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            scaled, json.loads((KEDA_SCHEMAS / "scaledobject_v1alpha1.json").read_text())
        )


@pytest.mark.parametrize(
    ("name", "script", "config_maps"),
    [
        ("gophermart-api", "gophermart-api", ["gophermart"]),
        ("gophermart-worker", "gophermart-worker", ["gophermart", "gophermart-worker"]),
    ],
)
def test_each_deployment_runs_its_program_with_real_settings_from_config_and_secret(
    manifests: list[Manifest], name: str, script: str, config_maps: list[str]
) -> None:
    deployment = find(manifests, "Deployment", name)
    app = container(deployment)
    assert app["command"] == [script] and script in SCRIPTS
    sources = [next(iter(source.items())) for source in app["envFrom"]]
    # The ConfigMaps, then the Secret.
    assert sources == [
        *(("configMapRef", {"name": config}) for config in config_maps),
        ("secretRef", {"name": "gophermart"}),
    ]
    names = set(env_of(deployment))
    for config in config_maps:
        names |= set(find(manifests, "ConfigMap", config)["data"])
    unknown = names - env_names(SETTINGS_OF[script])
    assert unknown == set(), f"{name} sets variables no setting reads: {unknown}"
    # Secrets come only from the Secret, never from a manifest.
    assert not {"DATABASE_URI", "SESSION_SECRET"} & names


def test_pods_run_unprivileged_as_the_image_user(manifests: list[Manifest]) -> None:
    image_uid = re.search(r"^USER (\d+):", (ROOT / "Dockerfile").read_text(), re.M)
    assert image_uid
    for deployment in (d for d in manifests if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(image_uid.group(1))
        assert pod["automountServiceAccountToken"] is False
        security = container(deployment)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        # ... with /tmp writable: the API's processes share their metrics there.
        [mount] = container(deployment)["volumeMounts"]
        [volume] = pod["volumes"]
        assert mount == {"name": volume["name"], "mountPath": "/tmp"}
        assert "emptyDir" in volume


def named_port(deployment: Manifest, name: str) -> int:
    [port] = [p["containerPort"] for p in container(deployment)["ports"] if p["name"] == name]
    return int(port)


@pytest.mark.parametrize(
    ("name", "variable", "port_name"),
    [
        ("gophermart-api", "RUN_ADDRESS", "http"),
        ("gophermart-worker", "WORKER_HEALTH_ADDRESS", "ops"),
    ],
)
def test_probes_and_scraping_hit_the_port_the_process_listens_on(
    manifests: list[Manifest], name: str, variable: str, port_name: str
) -> None:
    deployment = find(manifests, "Deployment", name)
    host, port = split_host_port(env_of(deployment)[variable])
    assert host == "0.0.0.0" and named_port(deployment, port_name) == port
    app = container(deployment)
    assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}
    assert app["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_name}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_and_the_disruption_budget_select_the_api_pods(
    manifests: list[Manifest],
) -> None:
    api = find(manifests, "Deployment", "gophermart-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find(manifests, "Service", "gophermart-api")
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    budget = find(manifests, "PodDisruptionBudget", "gophermart-api")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < api["spec"]["replicas"]
    # A rolling update never takes a serving pod away before its successor is ready.
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def bench_peak_rss_mb(process: str) -> int:
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    found = re.search(
        rf"^\| peak RSS of one {process} process under the load above "
        r"\(VmHWM\) \| (\d+) MB",
        results,
        re.M,
    )
    assert found, f"bench/RESULTS.md has no peak RSS figure for the {process}"
    return int(found.group(1))


def mebibytes(quantity: str) -> int:
    parsed = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert parsed, f"write memory as Mi or Gi: {quantity}"
    return int(parsed.group(1)) * (1024 if parsed.group(2) == "Gi" else 1)


@pytest.mark.parametrize(
    ("name", "process"), [("gophermart-api", "API"), ("gophermart-worker", "worker")]
)
def test_memory_is_sized_from_the_benchmark(
    manifests: list[Manifest], name: str, process: str
) -> None:
    deployment = find(manifests, "Deployment", name)
    resources = container(deployment)["resources"]
    # Processes per pod: explicit for the API, whose default follows the node's CPUs
    # when the pod has no CPU limit (one worker process per pod).
    processes = int(env_of(deployment).get("API_PROCESSES", "1"))
    assert processes >= 1 and ("API_PROCESSES" in env_of(deployment)) == (process == "API")
    peak_mib = processes * bench_peak_rss_mb(process) * 1e6 / 2**20
    request = mebibytes(resources["requests"]["memory"])
    limit = mebibytes(resources["limits"]["memory"])
    # The request covers the measured peak with headroom; the limit only stops a leak.
    assert 1.25 * peak_mib <= request < limit <= 4 * request
    assert "cpu" in resources["requests"] and "cpu" not in resources["limits"]


def connection_budget(manifests: list[Manifest]) -> int:
    """Connections the base opens at its largest: pools, the LISTEN connections (an API
    process has two: ended sessions and customers' changes; a worker one), plus KEDA."""
    api = find(manifests, "Deployment", "gophermart-api")
    worker = find(manifests, "Deployment", "gophermart-worker")
    scaled = find(manifests, "ScaledObject", "gophermart-worker")
    # The API's DB_POOL_MAX is its processes' total; each process adds two LISTENs
    # (ended sessions, customers' changes).
    per_api = int(env_of(api)["DB_POOL_MAX"]) + 2 * int(env_of(api)["API_PROCESSES"])
    per_worker = int(env_of(worker)["DB_POOL_MAX"]) + 1
    # During a rolling update maxSurge extra API pods run next to the old ones.
    api_pods = api["spec"]["replicas"] + api["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    return api_pods * per_api + scaled["spec"]["maxReplicaCount"] * per_worker + 1


def test_the_connection_budget_fits_a_default_postgresql_and_the_readme_says_it(
    manifests: list[Manifest],
) -> None:
    budget = connection_budget(manifests)
    assert budget <= PG_DEFAULT_CONNECTIONS
    readme = (ROOT / "README.md").read_text()
    assert f"at most **{budget}** connections" in readme


def scaler(manifests: list[Manifest]) -> tuple[Manifest, dict[str, str]]:
    scaled = find(manifests, "ScaledObject", "gophermart-worker")
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    return scaled, trigger


def test_the_worker_scales_on_the_queue_with_the_pods_own_secret(manifests: list[Manifest]) -> None:
    scaled, trigger = scaler(manifests)
    assert scaled["spec"]["scaleTargetRef"] == {"name": "gophermart-worker"}
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    auth = find(manifests, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "connection", "name": "gophermart", "key": "DATABASE_URI"}
    ]
    # The cap on the count never hides a reason to scale out.
    limit = re.search(r"LIMIT (\d+)", trigger["metadata"]["query"])
    assert limit and int(limit.group(1)) >= (
        float(trigger["metadata"]["targetQueryValue"]) * scaled["spec"]["maxReplicaCount"]
    )


async def test_the_backlog_query_counts_claimable_orders_through_the_due_index(
    manifests: list[Manifest], database_uri: str
) -> None:
    query = scaler(manifests)[1]["metadata"]["query"]
    now = datetime.now(UTC)
    conn = await asyncpg.connect(database_uri, server_settings={"search_path": "gophermart"})
    # A plain connection, as KEDA's: no search_path of ours, so the query names the schema.
    keda = await asyncpg.connect(database_uri)
    try:
        user = await conn.fetchval(
            "INSERT INTO users (login, password_hash) VALUES ('k', 'x') RETURNING id"
        )
        rows = [
            ("NEW", now - timedelta(seconds=5), None),
            ("PROCESSING", now - timedelta(seconds=1), None),
            ("NEW", now + timedelta(minutes=1), None),  # backing off: not due yet
            ("PROCESSING", now + timedelta(seconds=30), None),  # claimed: leased
            ("PROCESSED", now - timedelta(hours=1), 5),
        ]  # final
        for number, (status, due, accrual) in enumerate(rows):
            await conn.execute(
                "INSERT INTO orders (number, user_id, status, next_attempt_at, "
                "accrual) VALUES ($1, $2, $3, $4, $5)",
                str(number),
                user,
                status,
                due,
                accrual,
            )
        assert await keda.fetchval(query) == 2
        await conn.execute("UPDATE accrual_gate SET paused_until = now() + interval '1 minute'")
        assert await keda.fetchval(query) == 0  # a 429 pause: more workers would only wait
        await conn.execute("UPDATE accrual_gate SET paused_until = '-infinity'")
        async with keda.transaction():
            # Tiny tables favour a sequential scan; forbid it to see that the index serves.
            await keda.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await keda.fetch("EXPLAIN " + query))
        assert "orders_due" in plan, plan
    finally:
        await keda.close()
        await conn.close()

"""The Kubernetes manifests (deploy/kubernetes): valid objects for the Kubernetes versions they target, and
consistent with the image and the server they run.

Each check is a function returning the problems it finds. The suite shows that the rendered manifests pass
every check, and that each check catches what it is for, on broken copies (``BREAKAGES``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from fastapi.routing import APIRoute
from flight_price import main as module

from app.api.routes.health import router as health_router
from app.contract.connection import REGISTRY_SECRET_VARIABLES, S3_CREDENTIAL_VARIABLES
from app.settings import env_names
from tests.harness.manifests import (
    APP_NAME,
    KUSTOMIZATION_DIR,
    REPO,
    Document,
    Manifests,
    emulate,
    kustomization,
    kustomize,
    kustomize_command,
    load_documents,
    named,
    render,
    set_image,
)

# 1.30: the oldest release the manifests run on as written (preStop's sleep action is on by default from 1.30;
# 1.28's schema has no such field); 1.37: the newest schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS: Final = ("1.30.0", "1.37.0")
SECRET_EXAMPLE: Final = KUSTOMIZATION_DIR / "secret.example.yaml"
# Standard client variables outside the settings model that the manifests may set: only what the docs name for
# the narrow credentials path (docs/architecture.md "Threat model", app/prediction.env.example). MLflow's client
# variables (MLFLOW_TRACKING_USERNAME, ...) are settings fields already.
ALLOWED_CLIENT_VARIABLES: Final = frozenset({"AWS_SHARED_CREDENTIALS_FILE"})
WRITABLE_PATHS: Final = frozenset({module.MODEL_DIR, "/tmp"})
# Time around the pull before /health/live answers: settings and imports (about 1 s), uvicorn's start (4.2 s
# measured), and margin for a slow cold start (docs/benchmarks.md).
STARTUP_OVERHEAD_S: Final = 30
SHUTDOWN_MARGIN_S: Final = 5  # uvicorn's shutdown after the drain
MEASURED_WORKER_RSS_MB: Final = 178  # one worker, the 200k-row benchmark bundle (docs/benchmarks.md)
# Fields that hold no writable volume, whatever readOnly says.
READ_ONLY_VOLUME_TYPES: Final = frozenset({"secret", "configMap", "projected", "downwardAPI"})
# Kubernetes' defaults where a field is left out.
DEFAULT_PERIOD_S: Final = 10
DEFAULT_FAILURE_THRESHOLD: Final = 3
DEFAULT_GRACE_S: Final = 30
# What the pods may reach besides the registry and the S3 store: DNS, over UDP and TCP.
DNS_EGRESS: Final = frozenset({("UDP", 53), ("TCP", 53)})
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# The S3 store when no DVC_REMOTE_ENDPOINT_URL names another: AWS S3, over HTTPS.
AWS_S3_ENDPOINT: Final = "https://s3.amazonaws.com"

Check = Callable[[Manifests], list[str]]


@pytest.fixture(scope="module")
def rendered() -> Manifests:
    documents, how = render()
    print(f"\ndeploy/kubernetes rendered by: {how}")
    return Manifests(documents)


def probe_paths() -> set[str]:
    """The health endpoints the app serves (its router, not literals)."""
    return {route.path for route in health_router.routes if isinstance(route, APIRoute)}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: cores for CPU, bytes for memory."""
    text = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def literal(manifests: Manifests, name: str) -> str | None:
    """The value of a variable set in the container's own ``env`` (not a ConfigMap, not a Secret)."""
    values = [variable.get("value") for variable in manifests.container.get("env", []) if variable["name"] == name]
    return values[0] if values else None


def number(manifests: Manifests, name: str, problems: list[str]) -> float | None:
    """``name``'s value from the container's ``env`` as a number; else None, with the problem added."""
    value = literal(manifests, name)
    if value is None:
        problems.append(f"{name} is not set explicitly in the container's env (the pod spec depends on it)")
        return None
    try:
        return float(value)
    except ValueError:
        problems.append(f"{name}={value!r} is not a number")
        return None


def container_ports(manifests: Manifests) -> dict[str | int, int]:
    """The container's ports, by name and by number."""
    ports: dict[str | int, int] = {}
    for port in manifests.container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


# --- The checks ------------------------------------------------------------------------------------------------


def schema_problems(manifests: Manifests) -> list[str]:
    """Every object against the Kubernetes OpenAPI schemas, strictly (an unknown field fails)."""
    return [problem for document in manifests.documents for problem in validate(document)]


def validate(document: Document) -> list[str]:
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            problems.append(f"{document['kind']}/{document['metadata']['name']} on {version}: {exc.message} at {where}")
    return problems


def environment_problems(manifests: Manifests) -> list[str]:
    """Only settings names (and the documented client variables); secrets only from Secrets; no S3 keys at all."""
    problems = []
    allowed = env_names() | ALLOWED_CLIENT_VARIABLES
    sources = manifests.container.get("envFrom", [])
    config_maps = {document["metadata"]["name"] for document in manifests.all("ConfigMap")}
    for source in sources:
        if "configMapRef" not in source or source["configMapRef"]["name"] not in config_maps:
            problems.append(f"envFrom {source} is not a ConfigMap of these manifests (its names cannot be checked)")
    from_config = {name for config_map in manifests.config_maps() for name in config_map.get("data", {})}
    env = manifests.container.get("env", [])
    names = [variable["name"] for variable in env]
    for name in sorted(from_config | set(names)):
        if name not in allowed:
            problems.append(f"{name} is neither a settings name (app/settings.py) nor an allowed client variable")
    if duplicated := sorted({name for name in names if names.count(name) > 1} | (from_config & set(names))):
        problems.append(f"set twice (env and ConfigMap, or env twice): {duplicated}")
    for name in sorted(set(S3_CREDENTIAL_VARIABLES) & (from_config | set(names))):
        problems.append(f"{name} is set: S3 keys belong in the credentials file (AWS_SHARED_CREDENTIALS_FILE)")
    for name in (*REGISTRY_SECRET_VARIABLES, "MLFLOW_TRACKING_USERNAME"):
        if name in from_config:
            problems.append(f"{name} comes from a ConfigMap: credentials come from a Secret")
        for variable in env:
            if variable["name"] == name and "secretKeyRef" not in variable.get("valueFrom", {}):
                problems.append(f"{name} is not read from a Secret (secretKeyRef)")
    credentials_file = manifests.environment().get("AWS_SHARED_CREDENTIALS_FILE")
    if credentials_file is None:
        problems.append("AWS_SHARED_CREDENTIALS_FILE is not set: the pulls would find no S3 credentials")
    else:
        directory, _, file_name = credentials_file.rpartition("/")
        mount = manifests.mounts().get(directory)
        secret = (mount or {}).get("volume", {}).get("secret")
        if mount is None or secret is None or not mount.get("readOnly"):
            problems.append(f"AWS_SHARED_CREDENTIALS_FILE={credentials_file} is not in a read-only Secret mount")
        elif "items" in secret and file_name not in {item["path"] for item in secret["items"]}:
            problems.append(f"the Secret volume at {directory} holds no file {file_name}")
    return problems


def security_problems(manifests: Manifests) -> list[str]:
    """The pod runs as the image's non-root user, read-only, without privileges, capabilities or host access."""
    effective = {**manifests.pod.get("securityContext", {}), **manifests.container.get("securityContext", {})}
    uid = int(module.APP_UID)
    expected = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    problems = [
        f"securityContext.{field} is {effective.get(field)!r}, not {value!r}"
        for field, value in expected.items()
        if effective.get(field) != value
    ]
    capabilities = effective.get("capabilities", {})
    if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
        problems.append(f"capabilities are {capabilities}, not drop: [ALL] with nothing added")
    if effective.get("privileged"):
        problems.append("the container is privileged")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if manifests.pod.get(field):
            problems.append(f"{field} is set")
    for volume in manifests.pod.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']} is a hostPath")
    return problems


def writable_path_problems(manifests: Manifests) -> list[str]:
    """Writable: MODEL_DIR and /tmp, both bounded emptyDirs, and MODEL_DIR is where the models volume is."""
    problems = []
    writable = {
        path: mount
        for path, mount in manifests.mounts().items()
        if not mount.get("readOnly") and not READ_ONLY_VOLUME_TYPES & set(mount["volume"])
    }
    if set(writable) != WRITABLE_PATHS:
        problems.append(f"writable paths are {sorted(writable)}, not {sorted(WRITABLE_PATHS)}")
    for path, mount in writable.items():
        if "emptyDir" not in mount["volume"]:
            problems.append(f"{path} is not an emptyDir (volume {mount['name']})")
        elif "sizeLimit" not in (mount["volume"]["emptyDir"] or {}):
            problems.append(f"the emptyDir at {path} has no sizeLimit")
    model_dir = manifests.environment().get("MODEL_DIR")
    if model_dir != module.MODEL_DIR:
        problems.append(f"MODEL_DIR is {model_dir!r}, not the image's {module.MODEL_DIR}")
    if model_dir not in writable or "emptyDir" not in writable[model_dir]["volume"]:
        problems.append(f"MODEL_DIR={model_dir} is not the mountPath of a writable emptyDir")
    return problems


def probe_problems(manifests: Manifests) -> list[str]:
    """startup and liveness on /health/live, readiness on /health/ready, on the server's port; start-up
    tolerates the whole pull deadline."""
    problems = []
    served = probe_paths()
    ports = container_ports(manifests)
    expected = {"startupProbe": "/health/live", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    for probe_name, path in expected.items():
        probe = manifests.container.get(probe_name)
        http = (probe or {}).get("httpGet")
        if http is None:
            problems.append(f"{probe_name} is not an httpGet probe")
            continue
        if http["path"] != path or http["path"] not in served:
            problems.append(f"{probe_name} asks {http['path']}, not {path} (the app serves {sorted(served)})")
        if ports.get(http["port"]) != module.PORT:
            problems.append(f"{probe_name} asks port {http['port']!r}, not the server's port {module.PORT}")
    if literal(manifests, "PORT") != str(module.PORT):
        problems.append(f"PORT is {literal(manifests, 'PORT')!r} in env, not {module.PORT}")
    pull_deadline = number(manifests, "PULL_DEADLINE_S", problems)
    startup = manifests.container.get("startupProbe") or {}
    window = startup.get("periodSeconds", DEFAULT_PERIOD_S) * startup.get("failureThreshold", DEFAULT_FAILURE_THRESHOLD)
    if pull_deadline is not None and window < pull_deadline + STARTUP_OVERHEAD_S:
        problems.append(
            f"the startup probe gives up after {window} s, before PULL_DEADLINE_S={pull_deadline:g} + "
            f"{STARTUP_OVERHEAD_S} s (the server is not listening during the pull)"
        )
    return problems


def shutdown_problems(manifests: Manifests) -> list[str]:
    """terminationGracePeriodSeconds covers the preStop sleep, DRAIN_TIMEOUT_S and uvicorn's exit."""
    problems: list[str] = []
    drain = number(manifests, "DRAIN_TIMEOUT_S", problems)
    pre_stop = (manifests.container.get("lifecycle") or {}).get("preStop")
    if pre_stop is None or "sleep" not in pre_stop:
        problems.append("no preStop sleep: the pod would get SIGTERM while endpoints still send it requests")
        delay = 0
    else:
        delay = pre_stop["sleep"]["seconds"]
    grace = manifests.pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    if drain is not None and grace < delay + drain + SHUTDOWN_MARGIN_S:
        problems.append(
            f"terminationGracePeriodSeconds={grace} is below preStop {delay} s + DRAIN_TIMEOUT_S={drain:g} + "
            f"{SHUTDOWN_MARGIN_S} s: the drain would be killed"
        )
    return problems


def selector_problems(manifests: Manifests) -> list[str]:
    """The Deployment, Service, PDB, HPA and spread constraint all name the same pods."""
    problems = []
    deployment = manifests.deployment
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})

    def selects(selector: dict[str, Any] | None, what: str) -> None:
        match = (selector or {}).get("matchLabels", selector or {})
        if not match or (selector or {}).get("matchExpressions") or not match.items() <= labels.items():
            problems.append(f"{what} selects {selector}, not the Deployment's pods (labels {labels})")

    selects(deployment["spec"]["selector"], "the Deployment's selector")
    for service in manifests.all("Service"):
        selects(service["spec"].get("selector"), f"Service/{service['metadata']['name']}")
    for budget in manifests.all("PodDisruptionBudget"):
        selects(budget["spec"].get("selector"), f"PodDisruptionBudget/{budget['metadata']['name']}")
    for constraint in manifests.pod.get("topologySpreadConstraints", []):
        selects(constraint.get("labelSelector"), "a topologySpreadConstraint")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    for autoscaler in manifests.all("HorizontalPodAutoscaler"):
        if autoscaler["spec"]["scaleTargetRef"] != target:
            problems.append(f"the HPA scales {autoscaler['spec']['scaleTargetRef']}, not {target}")
    if not manifests.all("PodDisruptionBudget") or not manifests.all("HorizontalPodAutoscaler"):
        problems.append("no PodDisruptionBudget or no HorizontalPodAutoscaler")
    return problems


def service_problems(manifests: Manifests) -> list[str]:
    """A ClusterIP Service, port 80 named http, targeting the container's port."""
    problems = []
    ports = container_ports(manifests)
    (service,) = manifests.all("Service")
    if service["spec"].get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"the Service is {service['spec']['type']}, not ClusterIP")
    (port,) = service["spec"]["ports"]
    if (port["port"], port.get("name")) != (80, "http"):
        problems.append(f"the Service's port is {port['port']} named {port.get('name')}, not 80 named http")
    if ports.get(port.get("targetPort", port["port"])) != module.PORT:
        problems.append(f"the Service targets {port.get('targetPort')!r}, not the container's port {module.PORT}")
    return problems


def scaling_problems(manifests: Manifests) -> list[str]:
    """An autoscaling/v2 CPU HPA from at least 2 replicas; a PDB that lets one go at a time, never all."""
    problems = []
    (autoscaler,) = manifests.all("HorizontalPodAutoscaler")
    spec = autoscaler["spec"]
    if autoscaler["apiVersion"] != "autoscaling/v2":
        problems.append(f"the HPA is {autoscaler['apiVersion']}, not autoscaling/v2")
    metrics = [metric.get("resource", {}) for metric in spec.get("metrics", [])]
    if not any(m.get("name") == "cpu" and m.get("target", {}).get("type") == "Utilization" for m in metrics):
        problems.append("the HPA has no CPU utilisation target")
    minimum, maximum = spec.get("minReplicas", 1), spec["maxReplicas"]
    if minimum < 2 or maximum < minimum:
        problems.append(f"the HPA scales {minimum} to {maximum}: one pod alone cannot survive a disruption")
    replicas = manifests.deployment["spec"].get("replicas")
    if replicas is not None and not minimum <= replicas <= maximum:
        problems.append(f"the Deployment's replicas {replicas} is outside the HPA's {minimum} to {maximum}")
    if "cpu" not in manifests.container.get("resources", {}).get("requests", {}):
        problems.append("no CPU request: the HPA's utilisation is a share of it")
    (budget,) = manifests.all("PodDisruptionBudget")
    allowed = budget["spec"].get("maxUnavailable")
    floor = budget["spec"].get("minAvailable")
    if not (allowed == 1 or (isinstance(floor, int) and 1 <= floor < minimum)):
        problems.append(f"the PDB (maxUnavailable {allowed}, minAvailable {floor}) does not let exactly one go")
    return problems


def resource_problems(manifests: Manifests) -> list[str]:
    """Requests and limits from the measured worker RSS, with room for two models during a live refresh."""
    problems = []
    resources = manifests.container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                problems.append(f"no {resource} {kind[:-1]}")
    if problems:
        return problems
    workers = float(literal(manifests, "WORKERS") or 1)
    worker = MEASURED_WORKER_RSS_MB * 1e6 * workers
    request, limit = quantity(resources["requests"]["memory"]), quantity(resources["limits"]["memory"])
    if request < worker:
        problems.append(f"memory request {request / 2**20:.0f}Mi is below the measured RSS of {workers:g} worker(s)")
    if limit < 2 * worker or limit < request:
        problems.append(f"memory limit {limit / 2**20:.0f}Mi leaves no room for a second model during a refresh")
    if quantity(resources["limits"]["cpu"]) < quantity(resources["requests"]["cpu"]):
        problems.append("the CPU limit is below the request")
    return problems


def url_port(url: str) -> int:
    """The TCP port a client of ``url`` connects to (its scheme's default when it names none)."""
    parts = urlsplit(url)
    return parts.port or DEFAULT_PORTS[parts.scheme]


def network_policy_problems(manifests: Manifests) -> list[str]:
    """One NetworkPolicy selecting the Deployment's pods, for both directions: in, the serving port only (from any
    source: the Service is for whoever the cluster routes to it); out, DNS and the ports of the registry and the
    S3 store the ConfigMap names, each by port, nothing else. A rule without ports would allow every port."""
    policies = manifests.all("NetworkPolicy")
    if len(policies) != 1:
        return [f"{len(policies)} NetworkPolicies, not one: the pods' traffic is not restricted as documented"]
    (policy,) = policies
    spec = policy["spec"]
    problems = []
    labels = manifests.deployment["spec"]["template"]["metadata"].get("labels", {})
    selector = spec.get("podSelector") or {}
    match = selector.get("matchLabels") or {}
    if not match or selector.get("matchExpressions") or not match.items() <= labels.items():
        problems.append(f"the NetworkPolicy selects {selector}, not the Deployment's pods (labels {labels})")
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append(f"the NetworkPolicy's policyTypes are {spec.get('policyTypes')}, not Ingress and Egress")
    ports = container_ports(manifests)
    ingress = spec.get("ingress", [])
    if not ingress:
        problems.append("the NetworkPolicy admits nothing: the Service could not reach the pods")
    for rule in ingress:
        if not rule.get("ports"):
            problems.append(f"an ingress rule without ports admits every port: {rule}")
        for port in rule.get("ports", []):
            if ports.get(port.get("port")) != module.PORT or port.get("protocol", "TCP") != "TCP" or "endPort" in port:
                problems.append(f"ingress is allowed to {port}, not only to the serving port {module.PORT}/TCP")
    allowed: set[tuple[str, int | str]] = set()
    for rule in spec.get("egress", []):
        if not rule.get("ports"):
            problems.append(f"an egress rule without ports allows every port: {rule}")
        for port in rule.get("ports", []):
            if "endPort" in port:
                problems.append(f"an egress rule allows the port range {port}")
            allowed.add((port.get("protocol", "TCP"), port.get("port", "any")))
    settings = manifests.environment()
    registry = url_port(settings.get("MLFLOW_TRACKING_URI") or "")
    store = url_port(settings.get("DVC_REMOTE_ENDPOINT_URL") or AWS_S3_ENDPOINT)
    expected = DNS_EGRESS | {("TCP", registry), ("TCP", store)}
    if allowed != expected:
        problems.append(
            f"egress is allowed to {sorted(allowed, key=str)}, not DNS, the registry ({registry}/TCP, "
            f"MLFLOW_TRACKING_URI) and the S3 store ({store}/TCP) only: {sorted(expected, key=str)}"
        )
    return problems


def image_problems(manifests: Manifests) -> list[str]:
    """The serving image as `dagger call publish` names it, in a placeholder registry (no real host)."""
    image = manifests.container["image"]
    repository = re.split(r"[:@]", image.split("/", 1)[-1], maxsplit=1)[0]
    host = image.split("/", 1)[0] if "/" in image else ""
    problems = []
    if repository.rsplit("/", 1)[-1] != module.SERVING_IMAGE_NAME:
        problems.append(f"the image {image} is not .../{module.SERVING_IMAGE_NAME}")
    if not host.endswith(".invalid"):
        problems.append(f"the image's registry {host!r} is not a placeholder (.invalid): set yours in an overlay")
    return problems


def secret_problems(manifests: Manifests) -> list[str]:
    """No Secret is applied; every Secret and key the pod reads is in secret.example.yaml."""
    problems = [f"Secret/{s['metadata']['name']} would be applied" for s in manifests.all("Secret")]
    examples = {document["metadata"]["name"]: document for document in load_documents(SECRET_EXAMPLE)}
    used: set[tuple[str, str]] = set()
    for variable in manifests.container.get("env", []):
        if reference := variable.get("valueFrom", {}).get("secretKeyRef"):
            used.add((reference["name"], reference["key"]))
    for volume in manifests.pod.get("volumes", []):
        if secret := volume.get("secret"):
            used |= {(secret["secretName"], item["key"]) for item in secret.get("items", [])}
    for name, key in sorted(used):
        keys = set(examples.get(name, {}).get("stringData", {})) | set(examples.get(name, {}).get("data", {}))
        if key not in keys:
            problems.append(f"the pod reads key {key!r} of Secret {name}, which secret.example.yaml does not show")
    return problems


CHECKS: Final[list[Check]] = [
    schema_problems,
    environment_problems,
    security_problems,
    writable_path_problems,
    probe_problems,
    shutdown_problems,
    selector_problems,
    service_problems,
    scaling_problems,
    resource_problems,
    network_policy_problems,
    image_problems,
    secret_problems,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_manifests_pass(check: Check, rendered: Manifests) -> None:
    assert check(rendered) == []


# --- Each check fails on what it is for ---------------------------------------------------------------------------


def env_entry(manifests: Manifests, name: str) -> Document:
    return named(manifests.container["env"], name)


def add_env(manifests: Manifests, name: str, value: str) -> None:
    manifests.container["env"].append({"name": name, "value": value})


def add_writable_mount(manifests: Manifests) -> None:
    manifests.pod["volumes"].append({"name": "cache", "emptyDir": {}})
    manifests.container["volumeMounts"].append({"name": "cache", "mountPath": "/home/app/.cache"})


def mount_of(manifests: Manifests, name: str) -> Document:
    return named(manifests.container["volumeMounts"], name)


def volume(manifests: Manifests, name: str) -> Document:
    return named(manifests.pod["volumes"], name)


def add_secret(manifests: Manifests) -> None:
    manifests.documents.extend(load_documents(SECRET_EXAMPLE))


def policy(manifests: Manifests) -> Document:
    spec: Document = manifests.one("NetworkPolicy")["spec"]
    return spec


def without_network_policy(manifests: Manifests) -> None:
    manifests.documents.remove(manifests.one("NetworkPolicy"))


BREAKAGES: Final[list[Any]] = [
    pytest.param(schema_problems, lambda m: m.container.update(imagePullPolicyy="Always"), "imagePullPolicyy",
                 id="schema: an unknown field"),
    pytest.param(schema_problems, lambda m: m.pod.update(terminationGracePeriodSeconds="40"), "not of type",
                 id="schema: a wrong type"),
    pytest.param(environment_problems, lambda m: add_env(m, "MODEL_DIRECTORY", "/models"), "MODEL_DIRECTORY",
                 id="env: a name the settings do not read"),
    pytest.param(environment_problems, lambda m: m.one("ConfigMap")["data"].update(LOGLEVEL="debug"), "LOGLEVEL",
                 id="env: a ConfigMap key the settings do not read"),
    pytest.param(environment_problems, lambda m: add_env(m, "AWS_SECRET_ACCESS_KEY", "x"), "credentials file",
                 id="env: S3 keys in the environment"),
    pytest.param(environment_problems, lambda m: env_entry(m, "MLFLOW_TRACKING_PASSWORD").update(value="hunter2")
                 or env_entry(m, "MLFLOW_TRACKING_PASSWORD").pop("valueFrom"), "not read from a Secret",
                 id="env: a registry password written out"),
    pytest.param(environment_problems, lambda m: add_env(m, "MODEL_NAME", "other"), "set twice",
                 id="env: a ConfigMap key set again in env"),
    pytest.param(environment_problems, lambda m: env_entry(m, "AWS_SHARED_CREDENTIALS_FILE").update(value="/tmp/c"),
                 "not in a read-only Secret mount", id="env: the credentials file outside the Secret mount"),
    pytest.param(security_problems, lambda m: m.container["securityContext"].update(readOnlyRootFilesystem=False),
                 "readOnlyRootFilesystem", id="security: a writable root filesystem"),
    pytest.param(security_problems, lambda m: m.pod["securityContext"].update(runAsUser=0), "runAsUser",
                 id="security: root"),
    pytest.param(security_problems, lambda m: m.container["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
                 "capabilities", id="security: capabilities kept"),
    pytest.param(security_problems, lambda m: m.pod["securityContext"].pop("seccompProfile"), "seccompProfile",
                 id="security: no seccomp profile"),
    pytest.param(security_problems, lambda m: m.container["securityContext"].update(allowPrivilegeEscalation=True),
                 "allowPrivilegeEscalation", id="security: privilege escalation"),
    pytest.param(writable_path_problems, add_writable_mount, "writable paths", id="writable: a third writable path"),
    pytest.param(writable_path_problems, lambda m: mount_of(m, "models").update(mountPath="/data"), "MODEL_DIR=",
                 id="writable: MODEL_DIR not where the volume is"),
    pytest.param(writable_path_problems, lambda m: volume(m, "tmp").update(emptyDir={}), "no sizeLimit",
                 id="writable: an unbounded emptyDir"),
    pytest.param(probe_problems, lambda m: m.container["startupProbe"].update(failureThreshold=10),
                 "before PULL_DEADLINE_S", id="probes: start-up shorter than the pull deadline"),
    pytest.param(probe_problems, lambda m: env_entry(m, "PULL_DEADLINE_S").update(value="600"),
                 "before PULL_DEADLINE_S", id="probes: a pull deadline longer than start-up"),
    pytest.param(probe_problems, lambda m: m.container["readinessProbe"]["httpGet"].update(path="/healthz"),
                 "/healthz", id="probes: a path the app does not serve"),
    pytest.param(probe_problems, lambda m: m.container["startupProbe"]["httpGet"].update(path="/health/ready"),
                 "startupProbe asks /health/ready", id="probes: start-up on readiness"),
    pytest.param(probe_problems, lambda m: m.container["livenessProbe"]["httpGet"].update(port=8080),
                 "port 8080", id="probes: another port"),
    pytest.param(shutdown_problems, lambda m: m.pod.update(terminationGracePeriodSeconds=30), "would be killed",
                 id="shutdown: grace period too short"),
    pytest.param(shutdown_problems, lambda m: env_entry(m, "DRAIN_TIMEOUT_S").update(value="60"), "would be killed",
                 id="shutdown: drain longer than the grace period"),
    pytest.param(shutdown_problems, lambda m: m.container["env"].remove(env_entry(m, "DRAIN_TIMEOUT_S")),
                 "not set explicitly", id="shutdown: DRAIN_TIMEOUT_S left to its default"),
    pytest.param(shutdown_problems, lambda m: m.container.pop("lifecycle"), "no preStop sleep",
                 id="shutdown: no preStop"),
    pytest.param(selector_problems, lambda m: m.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
                 {"app.kubernetes.io/name": "other"}), "PodDisruptionBudget", id="selectors: the PDB's"),
    pytest.param(selector_problems, lambda m: m.one("Service")["spec"]["selector"].update(app="x"), "Service",
                 id="selectors: the Service's"),
    pytest.param(selector_problems, lambda m: m.one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(
                 name="other"), "the HPA scales", id="selectors: the HPA's target"),
    pytest.param(service_problems, lambda m: m.one("Service")["spec"]["ports"][0].update(targetPort=8080),
                 "the Service targets", id="service: another port"),
    pytest.param(service_problems, lambda m: m.one("Service")["spec"].update(type="NodePort"), "ClusterIP",
                 id="service: not ClusterIP"),
    pytest.param(scaling_problems, lambda m: m.one("HorizontalPodAutoscaler")["spec"].update(minReplicas=1),
                 "one pod alone", id="scaling: a single replica"),
    pytest.param(scaling_problems, lambda m: m.one("PodDisruptionBudget")["spec"].update(maxUnavailable=0),
                 "PDB", id="scaling: a PDB that blocks every eviction"),
    pytest.param(scaling_problems, lambda m: m.deployment["spec"].update(replicas=1), "outside the HPA",
                 id="scaling: replicas below the HPA's minimum"),
    pytest.param(resource_problems, lambda m: m.container["resources"]["limits"].update(memory="256Mi"),
                 "no room for a second model", id="resources: a limit for one model"),
    pytest.param(resource_problems, lambda m: env_entry(m, "WORKERS").update(value="4"), "below the measured RSS",
                 id="resources: more workers than sized for"),
    pytest.param(resource_problems, lambda m: m.container["resources"].pop("limits"), "no memory limit",
                 id="resources: no limits"),
    pytest.param(network_policy_problems, without_network_policy, "0 NetworkPolicies",
                 id="network: no policy"),
    pytest.param(network_policy_problems, lambda m: policy(m)["podSelector"]["matchLabels"].update(app="other"),
                 "not the Deployment's pods", id="network: another pod selector"),
    pytest.param(network_policy_problems, lambda m: policy(m).update(policyTypes=["Ingress"]), "policyTypes",
                 id="network: egress unrestricted"),
    pytest.param(network_policy_problems, lambda m: policy(m)["ingress"][0]["ports"].append(
                 {"port": 8080, "protocol": "TCP"}), "not only to the serving port", id="network: another port in"),
    pytest.param(network_policy_problems, lambda m: policy(m)["ingress"][0].pop("ports"), "admits every port",
                 id="network: every port in"),
    pytest.param(network_policy_problems, lambda m: policy(m)["egress"].append({"ports": [{"port": 5432}]}),
                 "egress is allowed", id="network: another port out"),
    pytest.param(network_policy_problems, lambda m: policy(m)["egress"].append({"to": [{"ipBlock": {
                 "cidr": "0.0.0.0/0"}}]}), "allows every port", id="network: every port out"),
    pytest.param(network_policy_problems, lambda m: m.one("ConfigMap")["data"].update(
                 MLFLOW_TRACKING_URI="https://mlflow.example.invalid"), "the registry (443/TCP",
                 id="network: the registry's port moved"),
    pytest.param(network_policy_problems, lambda m: m.one("ConfigMap")["data"].update(
                 DVC_REMOTE_ENDPOINT_URL="http://minio.example.invalid:9000"), "the S3 store (9000/TCP",
                 id="network: another S3 store"),
    pytest.param(network_policy_problems, lambda m: policy(m)["egress"][0]["ports"].pop(1), "egress is allowed",
                 id="network: DNS over UDP only"),
    pytest.param(image_problems, lambda m: m.container.update(image="registry.example.invalid/x/nginx:1"),
                 "not .../prediction-server", id="image: another image"),
    pytest.param(image_problems, lambda m: m.container.update(image="ghcr.io/someone/prediction-server:latest"),
                 "not a placeholder", id="image: a real registry"),
    pytest.param(secret_problems, add_secret, "would be applied", id="secrets: the example applied"),
    pytest.param(secret_problems, lambda m: env_entry(m, "MLFLOW_TRACKING_PASSWORD")["valueFrom"]["secretKeyRef"]
                 .update(key="pass"), "'pass'", id="secrets: a key the example does not show"),
]  # fmt: skip


@pytest.mark.parametrize(("check", "breakage", "expected"), BREAKAGES)
def test_each_check_catches_its_breakage(
    check: Check, breakage: Callable[[Manifests], object], expected: str, rendered: Manifests
) -> None:
    broken = Manifests(copy.deepcopy(rendered.documents))
    breakage(broken)
    problems = check(broken)
    assert any(expected in problem for problem in problems), problems


def test_every_check_has_a_breakage() -> None:
    assert {param.values[0] for param in BREAKAGES} == set(CHECKS)


# --- The rendering and the files ------------------------------------------------------------------------------------


@pytest.mark.integration  # runs the real kustomize (kubectl's), absent from the tools image
def test_the_emulated_rendering_is_what_kustomize_renders() -> None:
    if kustomize_command() is None:
        pytest.fail(
            "no kustomize or kubectl on this machine: the emulated rendering cannot be compared with the real one"
        )

    def keyed(documents: list[Document]) -> dict[tuple[str, str], Document]:
        return {(document["kind"], document["metadata"]["name"]): document for document in documents}

    real, emulated = keyed(kustomize()), keyed(emulate())
    assert real.keys() == emulated.keys()
    for key, document in real.items():
        assert document == emulated[key], key


def test_the_emulation_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [], "namespace": "x"}))
    with pytest.raises(ValueError, match="namespace"):
        emulate(tmp_path)


@pytest.mark.parametrize(
    ("image", "rule", "expected"),
    [
        ("prediction-server", {"newName": "r.invalid/p"}, "r.invalid/p"),
        ("prediction-server", {"newTag": "v1"}, "prediction-server:v1"),
        ("prediction-server:old", {"newName": "r.invalid/p", "newTag": "v1"}, "r.invalid/p:v1"),
        ("prediction-server:old", {"digest": "sha256:ab"}, "prediction-server@sha256:ab"),
        ("other:1", {"newName": "r.invalid/p"}, "other:1"),
    ],
)
def test_images_rules_as_kustomize_applies_them(image: str, rule: dict[str, str], expected: str) -> None:
    assert set_image(image, [{"name": "prediction-server", **rule}]) == expected


def test_the_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = kustomization()["resources"]
    files = sorted(p.name for p in KUSTOMIZATION_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == sorted(set(files) - {SECRET_EXAMPLE.name})
    assert SECRET_EXAMPLE.name not in listed


def test_the_secret_example_is_valid_and_holds_no_credentials() -> None:
    examples = load_documents(SECRET_EXAMPLE)
    assert {document["kind"] for document in examples} == {"Secret"}
    assert [problem for document in examples for problem in validate(document)] == []
    values = [value for document in examples for value in document["stringData"].values()]
    assert all("REPLACE-WITH" in value for value in values if value != "serving-reader")


def test_the_allowed_client_variables_are_the_documented_ones() -> None:
    threat_model = (REPO / "docs" / "architecture.md").read_text().split("## Threat model", 1)[1].split("\n## ")[0]
    example = (REPO / "app" / "prediction.env.example").read_text()
    for name in ALLOWED_CLIENT_VARIABLES:
        assert name not in env_names()
        assert name in threat_model and name in example


def test_the_deployment_runs_the_image_it_names(rendered: Manifests) -> None:
    """The container keeps the image's own entrypoint and working directory (nothing overrides them)."""
    assert not {"command", "args", "workingDir"} & set(rendered.container)
    assert rendered.container["name"] == APP_NAME

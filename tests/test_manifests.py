"""The Kubernetes manifests (manifests/), the Dockerfile and .dockerignore.

manifests/base and manifests/overlays/example are rendered with the real
`kubectl kustomize` (tests/kubectl.py), and every object is validated, strictly
(unknown fields fail), against the Kubernetes JSON schemas shipped by
kubernetes-validate for each version in K8S_VERSIONS.

kubernetes-validate has no schemas for custom resources: the ServiceMonitors
(monitoring.coreos.com/v1, the Prometheus Operator's CRD) are checked by hand
against the CRD's required fields and the fields used here
(`test_servicemonitors_match_the_crd_and_their_services`).

Then wakegate's own contract: the controller's RBAC has no wildcard and its Lease rights are scoped,
every container is non-root with a read-only root filesystem and has requests
and limits, probes, ports, selectors and references all line up, and the
example environments are labelled and annotated as the kubernetes runtime
discovers them. Nothing is skipped: without kubernetes-validate the schema
tests fail and say how to install it.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from controller.config import load_config, parse_duration

from .kubectl import KustomizeError, kustomize

kubernetes_validate: ModuleType | None
try:
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions
except ImportError as exc:  # reported by the `validate` fixture, never skipped
    kubernetes_validate = None
    KV_IMPORT_ERROR: ImportError | None = exc
else:
    KV_IMPORT_ERROR = None

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
BASE = MANIFESTS / "base"
OVERLAY = MANIFESTS / "overlays" / "example"
TOKEN_TEMPLATE = BASE / "token-secret.example.yaml"

# The oldest Kubernetes the manifests support, and the newest schema shipped.
MIN_K8S_VERSION = "1.30"
NAMESPACE = "wakegate-system"
COMMON_LABEL = ("app.kubernetes.io/name", "wakegate")
USER_ID = 10001
CONFIG_PATH = "/etc/wakegate/wakegate.yaml"
TOKEN_SECRET = ("wakegate-token", "token")
CONTROLLER_URL = "http://wakegate-controller.wakegate-system.svc:8081"
HOLD_TIMEOUT_DEFAULT = 60.0  # the contract (docs/contract.md): the hold timeout's default
KINDS = ("private", "demo", "development", "staging", "production", "prerelease")
ENVIRONMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,23}")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Custom resources kubernetes-validate has no schema for: checked by hand.
CRD_KINDS = frozenset({("monitoring.coreos.com/v1", "ServiceMonitor")})

# Which verbs the controller needs is not written here: tests/test_kubernetes.py
# compares the grant with the fake API server's log of the controller's calls.
# Here only the shape: leases are granted by a Role in wakegate-system only.
LEASE_RULES = frozenset(
    ("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")
)
LEASE_NAME = "wakegate-controller"

# The example overlay's environments: namespace -> (environment, kind, replicas).
EXAMPLE_ENVIRONMENTS = {
    "hello-private": ("private", "private", 0),
    "hello-demo": ("demo", "demo", 0),
    "hello-production": ("production", "production", 2),
}
INGRESS_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/proxy-read-timeout": "120",
    "nginx.ingress.kubernetes.io/proxy-send-timeout": "120",
    "nginx.ingress.kubernetes.io/proxy-buffering": "off",
}


# --------------------------------------------------------------------------- helpers


@functools.cache
def _kustomized(directory: Path) -> tuple[Obj, ...]:
    return tuple(kustomize(directory))  # one kubectl run per directory and test process


def rendered(name: str) -> list[Obj]:
    """The objects of manifests/base or the example overlay: a copy a test may change."""
    return copy.deepcopy(list(_kustomized({"base": BASE, "overlay": OVERLAY}[name])))


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return rendered("base")


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return rendered("overlay")


def k8s_versions() -> list[str]:
    """MIN_K8S_VERSION and the newest schema kubernetes-validate ships."""
    if kubernetes_validate is None:
        return [MIN_K8S_VERSION]
    newest = ".".join(all_versions()[-1].split(".")[:2])
    return sorted({MIN_K8S_VERSION, newest})


@pytest.fixture
def validate() -> Callable[[Obj, str], None]:
    if kubernetes_validate is None:
        pytest.fail(
            f"kubernetes-validate is not installed ({KV_IMPORT_ERROR}); it is in the test "
            "extras: run `.venv/bin/pip install -e '.[test]'`",
            pytrace=False,
        )
    module = kubernetes_validate

    def check(obj: Obj, version: str) -> None:
        module.validate(obj, version, strict=True)

    return check


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str, namespace: str | None = NAMESPACE) -> Obj:
    found = [
        obj
        for obj in of_kind(objects, kind)
        if obj["metadata"]["name"] == name and obj["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def where(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"


def pod_spec(deployment: Obj) -> Obj:
    return deployment["spec"]["template"]["spec"]


def containers(deployment: Obj) -> list[Obj]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def only_container(deployment: Obj) -> Obj:
    (container,) = pod_spec(deployment)["containers"]
    return container


def container_port(container: Obj, port: int | str) -> int:
    """The number of a container port given by number or by name."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            return int(entry["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {port!r}")


def probe(container: Obj, kind: str) -> tuple[str, int]:
    get = container[kind]["httpGet"]
    return get["path"], container_port(container, get["port"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def match_labels(selector: Obj) -> dict[str, str]:
    assert set(selector) == {"matchLabels"}, f"use matchLabels only, got {selector}"
    return selector["matchLabels"]


def config_text(objects: list[Obj]) -> str:
    return one(objects, "ConfigMap", "wakegate-config")["data"]["wakegate.yaml"]


def config_data(objects: list[Obj]) -> Obj:
    return yaml.safe_load(config_text(objects))


def quantity(value: str | int, kind: str) -> float:
    """CPU in cores or memory in bytes, from a Kubernetes quantity."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?", text)
    assert match, f"{kind} quantity {text!r} is not one this test understands"
    return float(match[1]) * units.get(match[2] or "", 1)


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


# --------------------------------------------------------------------------- schemas


def test_kubernetes_validate_ships_the_schemas(validate: Callable[[Obj, str], None]) -> None:
    shipped = {".".join(v.split(".")[:2]) for v in all_versions()}
    assert MIN_K8S_VERSION in shipped, (
        f"kubernetes-validate no longer ships Kubernetes {MIN_K8S_VERSION} schemas "
        f"(it has {sorted(shipped)}): pin a version that does in pyproject.toml"
    )


@pytest.mark.parametrize("version", k8s_versions())
@pytest.mark.parametrize("which", ["base", "overlay"])
def test_objects_match_the_kubernetes_schemas(
    which: str, version: str, validate: Callable[[Obj, str], None]
) -> None:
    assert kubernetes_validate is not None
    problems: list[str] = []
    checked = by_hand = 0
    for obj in rendered(which):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            by_hand += 1  # no schema: test_servicemonitors_match_the_crd_and_their_services
            continue
        try:
            validate(obj, version)
            checked += 1
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{where(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where(obj)}: {exc.message}")
    assert not problems, "\n".join(problems)
    assert checked > 0 and by_hand == 2


def test_token_secret_is_a_template_never_rendered(
    base: list[Obj], overlay: list[Obj], validate: Callable[[Obj, str], None]
) -> None:
    (template,) = yaml.safe_load_all(TOKEN_TEMPLATE.read_text())
    for version in k8s_versions():
        validate(template, version)
    name, key = TOKEN_SECRET
    assert (template["metadata"]["name"], template["metadata"]["namespace"]) == (name, NAMESPACE)
    # Empty: applied as is, the controller refuses to start rather than run with a known token.
    assert template["stringData"] == {key: ""}
    # A token never comes from git: no Secret is rendered.
    assert not of_kind(base, "Secret") and not of_kind(overlay, "Secret")
    for deployment in of_kind(base, "Deployment"):
        env = {e["name"]: e for e in only_container(deployment)["env"]}
        ref = env["WAKEGATE_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == TOKEN_SECRET, where(deployment)
        assert not ref.get("optional", False), where(deployment)


# --------------------------------------------------------------------------- RBAC


def test_rbac_grants_exactly_the_expected_rules(overlay: list[Obj]) -> None:
    granted: set[tuple[str, str, str]] = set()
    for role in of_kind(overlay, "ClusterRole") + of_kind(overlay, "Role"):
        assert "aggregationRule" not in role, where(role)
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule, where(role)
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in value for value in rule.get(field, [])), (
                    f"{where(role)}: a wildcard in {field}"
                )
            tuples = {
                (group, resource, verb)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
            if role["kind"] == "Role":
                assert role["metadata"]["namespace"] == NAMESPACE, where(role)
                assert tuples <= LEASE_RULES, f"{where(role)} grants {tuples - LEASE_RULES}"
                if rule.get("resourceNames") != [LEASE_NAME]:
                    assert {verb for _, _, verb in tuples} == {"create"}, (
                        f"{where(role)}: get/update only on the Lease {LEASE_NAME}"
                    )
            else:
                assert not tuples & LEASE_RULES, f"{where(role)}: leases only in {NAMESPACE}"
                assert "resourceNames" not in rule, where(role)
            granted |= tuples
    assert granted, "the controller is granted nothing"


def test_rbac_is_bound_to_the_controller_only(overlay: list[Obj]) -> None:
    bindings = of_kind(overlay, "ClusterRoleBinding") + of_kind(overlay, "RoleBinding")
    assert {b["kind"] for b in bindings} == {"ClusterRoleBinding", "RoleBinding"}
    roles = {
        (obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
        for obj in of_kind(overlay, "ClusterRole") + of_kind(overlay, "Role")
    }
    bound = set()
    for binding in bindings:
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ref["name"], namespace) in roles, f"{where(binding)}: no such role"
        bound.add((ref["kind"], ref["name"], namespace))
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "wakegate-controller", "namespace": NAMESPACE}
        ], where(binding)
    assert bound == roles, "every role is bound"
    one(overlay, "ServiceAccount", "wakegate-controller")


def test_service_accounts(overlay: list[Obj]) -> None:
    proxy_account = one(overlay, "ServiceAccount", "wakegate-proxy")
    assert proxy_account["automountServiceAccountToken"] is False
    proxy = pod_spec(one(overlay, "Deployment", "wakegate-proxy"))
    assert proxy["serviceAccountName"] == "wakegate-proxy"
    assert proxy["automountServiceAccountToken"] is False
    controller = pod_spec(one(overlay, "Deployment", "wakegate-controller"))
    assert controller["serviceAccountName"] == "wakegate-controller"
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["name"])
        for a in of_kind(overlay, "ServiceAccount")
    }
    for deployment in of_kind(overlay, "Deployment"):
        spec = pod_spec(deployment)
        account = spec.get("serviceAccountName", "default")
        namespace = deployment["metadata"]["namespace"]
        if account != "default":
            assert (namespace, account) in accounts, where(deployment)
        if deployment["metadata"]["name"] != "wakegate-controller":
            # Only the controller talks to the Kubernetes API.
            assert spec.get("automountServiceAccountToken") is False, where(deployment)


# --------------------------------------------------------------------------- pods


def test_every_container_is_non_root_read_only_with_requests_and_limits(
    overlay: list[Obj],
) -> None:
    deployments = of_kind(overlay, "Deployment")
    assert len(deployments) == 2 + len(EXAMPLE_ENVIRONMENTS) + 1  # production: two colours
    for deployment in deployments:
        pod = pod_spec(deployment).get("securityContext", {})
        for container in containers(deployment):
            name = f"{where(deployment)} container {container['name']}"
            ctx = container.get("securityContext", {})
            # A container's securityContext wins over the pod's.
            effective = {**pod, **ctx}
            assert effective.get("runAsNonRoot") is True, name
            assert effective.get("runAsUser") == USER_ID, name
            assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, name
            assert ctx.get("allowPrivilegeEscalation") is False, name
            assert ctx.get("readOnlyRootFilesystem") is True, name
            assert ctx.get("privileged", False) is False, name
            assert ctx.get("capabilities") == {"drop": ["ALL"]}, name
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request is not None and limit is not None, f"{name}: {resource}"
                assert quantity(request, resource) <= quantity(limit, resource), name


def test_wakegate_pods_have_a_writable_tmp_and_the_state_dir_in_it(base: list[Obj]) -> None:
    state_dir = config_data(base)["state_dir"]
    for deployment in of_kind(base, "Deployment"):
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        mounts = {m["mountPath"]: m for m in only_container(deployment)["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], where(deployment)
    assert state_dir.startswith("/tmp/"), "state_dir must be on the writable emptyDir"


def test_probes_and_ports(overlay: list[Obj]) -> None:
    expected = {"wakegate-controller": 8081, "wakegate-proxy": 8080}
    for name, port in expected.items():
        container = only_container(one(overlay, "Deployment", name))
        assert probe(container, "livenessProbe") == ("/healthz", port), name
        assert probe(container, "readinessProbe") == ("/readyz", port), name
        assert [p["containerPort"] for p in container["ports"]] == [port], name
    for deployment in of_kind(overlay, "Deployment"):
        for container in containers(deployment):
            assert "livenessProbe" in container or "readinessProbe" in container, where(deployment)


def test_prometheus_scrape_annotations(base: list[Obj]) -> None:
    for deployment in of_kind(base, "Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        container = only_container(deployment)
        assert annotations["prometheus.io/scrape"] == "true", where(deployment)
        assert annotations["prometheus.io/path"] == "/metrics", where(deployment)
        port = int(annotations["prometheus.io/port"])
        assert container_port(container, port) == port, where(deployment)


@pytest.mark.parametrize("name", ["wakegate-controller", "wakegate-proxy"])
def test_both_read_the_configmap(base: list[Obj], name: str) -> None:
    # The proxy reads its own settings (trusted_proxies, sizes) from the proxy: section.
    deployment = one(base, "Deployment", name)
    container = only_container(deployment)
    assert container["args"][:3] == [name.removeprefix("wakegate-"), "-c", CONFIG_PATH]
    assert "command" not in container, "the image's ENTRYPOINT is wakegate"
    directory = str(Path(CONFIG_PATH).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "wakegate-config"
    assert Path(CONFIG_PATH).name in one(base, "ConfigMap", "wakegate-config")["data"]


def test_controller_replicas(base: list[Obj]) -> None:
    assert one(base, "Deployment", "wakegate-controller")["spec"]["replicas"] == 2


@pytest.mark.parametrize("which, domain", [("base", "example.invalid"), ("overlay", "example.com")])
def test_the_config_file_loads(which: str, domain: str, tmp_path: Path) -> None:
    objects = rendered(which)
    file = tmp_path / "wakegate.yaml"
    file.write_text(config_text(objects))
    config = load_config(str(file))  # the project's own loader: raises on any problem
    assert config.runtime == "kubernetes"
    assert config.domain == domain
    assert (config.controller.host, config.controller.port) == ("0.0.0.0", 8081)
    assert config_data(objects)["listen"] == {"proxy": "0.0.0.0:8080", "controller": "0.0.0.0:8081"}
    # Environments and services are discovered from the cluster, never listed.
    assert not config.environments and not config.services
    # The Lease the controller elects its leader with is the one the Role grants.
    kubernetes = getattr(config, "kubernetes", None)  # the settings arrive with the runtime
    if kubernetes is not None:
        role = one(objects, "Role", "wakegate-controller-leader-election")
        assert kubernetes.lease_namespace == role["metadata"]["namespace"]
        assert kubernetes.lease_name == LEASE_NAME


def test_proxy_reaches_the_controller_service(base: list[Obj]) -> None:
    container = only_container(one(base, "Deployment", "wakegate-proxy"))
    args = container["args"]
    assert args[3:] == ["--controller", CONTROLLER_URL, "--listen", "0.0.0.0:8080"]
    url = urlsplit(args[args.index("--controller") + 1])
    service_name, namespace, svc = url.hostname.split(".")  # type: ignore[union-attr]
    assert svc == "svc"
    service = one(base, "Service", service_name, namespace)
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    listen_port = int(args[args.index("--listen") + 1].rpartition(":")[2])
    assert container_port(container, listen_port) == listen_port


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_the_controller_api_answers_to_the_name_proxies_call_it_by(
    which: str, tmp_path: Path,
) -> None:
    # Else every proxy call would be refused as DNS rebinding (421).
    objects = rendered(which)
    file = tmp_path / "wakegate.yaml"
    file.write_text(config_text(objects))
    config = load_config(str(file))
    container = only_container(one(objects, "Deployment", "wakegate-proxy"))
    host = urlsplit(container["args"][container["args"].index("--controller") + 1]).hostname
    assert host in config.controller.hostnames, config.controller.hostnames
    assert config.controller.allowed_origins == ()


# --------------------------------------------------------------------------- wiring


def test_every_object_of_the_base_carries_the_common_label(base: list[Obj]) -> None:
    key, value = COMMON_LABEL
    for obj in base:
        assert obj["metadata"]["labels"].get(key) == value, where(obj)
        if obj["kind"] == "Deployment":
            assert obj["spec"]["template"]["metadata"]["labels"].get(key) == value


def test_deployment_selectors_match_their_templates(overlay: list[Obj]) -> None:
    for deployment in of_kind(overlay, "Deployment"):
        selector = match_labels(deployment["spec"]["selector"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels), where(deployment)
        affinity = pod_spec(deployment).get("affinity", {}).get("podAntiAffinity", {})
        for term in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", []):
            term_selector = match_labels(term["podAffinityTerm"]["labelSelector"])
            assert selects(term_selector, labels), f"{where(deployment)}: anti-affinity"


def test_every_service_selects_one_deployment_and_its_ports(overlay: list[Obj]) -> None:
    for service in of_kind(overlay, "Service"):
        namespace = service["metadata"]["namespace"]
        matched = [
            d
            for d in of_kind(overlay, "Deployment")
            if d["metadata"]["namespace"] == namespace
            and selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"{where(service)} selects {len(matched)} Deployments"
        (container,) = containers(matched[0])
        for port in service["spec"]["ports"]:
            container_port(container, port["targetPort"])


def test_servicemonitors_match_the_crd_and_their_services(base: list[Obj]) -> None:
    """By hand: kubernetes-validate has no schema for monitoring.coreos.com/v1."""
    duration = re.compile(r"(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)")
    spec_fields = {
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    }
    endpoint_fields = {
        "port",
        "targetPort",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "honorLabels",
    }
    monitors = of_kind(base, "ServiceMonitor")
    services = of_kind(base, "Service")
    monitored = set()
    for monitor in monitors:
        name = where(monitor)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1", name
        assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}, name
        assert DNS_LABEL.fullmatch(monitor["metadata"]["name"]), name
        assert monitor["metadata"]["namespace"] == NAMESPACE, name  # a namespaced CRD
        spec = monitor["spec"]
        assert {"selector", "endpoints"} <= set(spec) <= spec_fields, name  # required, known
        selector = match_labels(spec["selector"])
        namespaces = spec.get("namespaceSelector", {}).get("matchNames", [NAMESPACE])
        targets = [
            s
            for s in services
            if s["metadata"]["namespace"] in namespaces
            and selects(selector, s["metadata"]["labels"])
        ]
        assert len(targets) == 1, f"{name} selects {len(targets)} Services"
        monitored.add(targets[0]["metadata"]["name"])
        port_names = {p.get("name") for p in targets[0]["spec"]["ports"]}
        assert spec["endpoints"], name
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= endpoint_fields, name
            assert ("port" in endpoint) != ("targetPort" in endpoint), name  # exclusive
            assert endpoint.get("port") in port_names, f"{name}: no port {endpoint.get('port')}"
            assert endpoint.get("path", "/metrics") == "/metrics", name
            assert duration.fullmatch(endpoint.get("interval", "30s")), name
    assert monitored == {s["metadata"]["name"] for s in services}, "one per Service"


def test_proxy_autoscaling_and_disruption_budget(base: list[Obj]) -> None:
    proxy = one(base, "Deployment", "wakegate-proxy")
    labels = proxy["spec"]["template"]["metadata"]["labels"]
    # The HPA owns the replicas; a replicas field would be reset by every apply.
    assert "replicas" not in proxy["spec"]
    (hpa,) = of_kind(base, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "wakegate-proxy",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in only_container(proxy)["resources"]["requests"], "utilization needs it"

    (pdb,) = of_kind(base, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(match_labels(pdb["spec"]["selector"]), labels)


def test_controller_is_never_deadlocked_by_its_leader_only_readiness(base: list[Obj]) -> None:
    """/readyz is 200 only on the leader, so only one controller pod is ever Ready.

    A PodDisruptionBudget would then forbid evicting the leader (every drain of
    its node hangs), and a rolling update would wait forever for a new pod to
    become Ready while the old leader holds the Lease.
    """
    controller = one(base, "Deployment", "wakegate-controller")
    labels = controller["spec"]["template"]["metadata"]["labels"]
    for pdb in of_kind(base, "PodDisruptionBudget"):
        assert not selects(match_labels(pdb["spec"]["selector"]), labels), where(pdb)
    assert controller["spec"]["strategy"] == {"type": "Recreate"}


def test_proxy_drains_before_it_stops(base: list[Obj]) -> None:
    proxy = one(base, "Deployment", "wakegate-proxy")
    command = only_container(proxy)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = pod_spec(proxy)["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + HOLD_TIMEOUT_DEFAULT + 10, "held requests need hold_timeout"
    strategy = proxy["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


# --------------------------------------------------------------------------- example overlay


def test_example_environments(overlay: list[Obj]) -> None:
    namespaces = {
        ns["metadata"]["name"]: ns["metadata"].get("labels", {})
        for ns in of_kind(overlay, "Namespace")
        if "wakegate.dev/environment" in ns["metadata"].get("labels", {})
        or "wakegate.dev/kind" in ns["metadata"].get("labels", {})
    }
    assert set(namespaces) == set(EXAMPLE_ENVIRONMENTS)
    for namespace, (environment, kind, replicas) in EXAMPLE_ENVIRONMENTS.items():
        labels = namespaces[namespace]
        assert labels["wakegate.dev/environment"] == environment, namespace
        assert labels["wakegate.dev/kind"] == kind, namespace
        assert labels["wakegate.dev/kind"] in KINDS, namespace
        assert ENVIRONMENT_NAME.fullmatch(environment), namespace

        # Production has two colours (blue live at first); the others one Deployment.
        # ... named with the environment's prefix (production's is "prod").
        names = ["prod-hello-blue", "prod-hello-green"] if kind == "production" else ["hello"]
        selectors = []
        for name in names:
            deployment = one(overlay, "Deployment", name, namespace)
            service = one(overlay, "Service", name, namespace)
            for obj in (deployment, service):
                assert obj["metadata"]["annotations"]["wakegate.dev/service"] == "hello", \
                    where(obj)
            assert DNS_LABEL.fullmatch(name)
            assert deployment["spec"]["replicas"] == (0 if name.endswith("-green")
                                                      else replicas)
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert service["spec"]["selector"] == selector, where(service)
            assert selector.items() <= deployment["spec"]["template"]["metadata"][
                "labels"].items(), where(deployment)
            selectors.append(selector)
        # Each colour's Service (its EndpointSlices) must select only its own pods.
        assert len({tuple(sorted(s.items())) for s in selectors}) == len(names), namespace
        deployment = one(overlay, "Deployment", names[0], namespace)
        annotations = deployment["metadata"]["annotations"]
        for key in ("wakegate.dev/idle-timeout", "wakegate.dev/hold-timeout"):
            if key in annotations:
                assert parse_duration(annotations[key]) > 0, f"{namespace}: {key}"
        for path in annotations.get("wakegate.dev/ignore-paths", "/").split(","):
            assert path.startswith("/") and path == path.strip(), f"{namespace}: {path!r}"

        container = only_container(deployment)
        # The image tag is {version}-{prefix}.
        tag = "1.0.0-prod" if kind == "production" else "1.0.0"
        assert container["image"] == f"ghcr.io/wakegate/hello:{tag}"
        assert probe(container, "readinessProbe") == ("/healthz", 8080), namespace
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PORT"] == "8080", namespace
        assert container_port(container, "http") == 8080


def test_ingress_routes_every_environment_to_the_proxy(overlay: list[Obj]) -> None:
    (ingress,) = of_kind(overlay, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    annotations = ingress["metadata"]["annotations"]
    assert INGRESS_ANNOTATIONS.items() <= annotations.items()
    # nginx must wait longer than wakegate holds a request, or it cuts cold starts.
    holds = [HOLD_TIMEOUT_DEFAULT] + [
        parse_duration(d["metadata"]["annotations"]["wakegate.dev/hold-timeout"])
        for d in of_kind(overlay, "Deployment")
        if "wakegate.dev/hold-timeout" in d["metadata"].get("annotations", {})
    ]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[f"nginx.ingress.kubernetes.io/{key}"]) > max(holds), key

    # {service}.{environment}.{domain}: a wildcard covers one label, so one per environment.
    domain = config_data(overlay)["domain"]
    environments = {env for env, _, _ in EXAMPLE_ENVIRONMENTS.values()} | {"prerelease"}
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert sorted(hosts) == sorted(f"*.{env}.{domain}" for env in environments)

    namespace = ingress["metadata"]["namespace"]
    for rule in ingress["spec"]["rules"]:
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/", "Prefix")
        backend = path["backend"]["service"]
        assert backend["name"] == "wakegate-proxy"
        service = one(overlay, "Service", backend["name"], namespace)
        names = {p.get("name") for p in service["spec"]["ports"]}
        numbers = {p["port"] for p in service["spec"]["ports"]}
        port = backend["port"]
        assert port.get("name") in names or port.get("number") in numbers, rule["host"]


# --------------------------------------------------------------------------- image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile(base: list[Obj]) -> None:
    instructions = dockerfile_instructions()

    def get(name: str) -> list[str]:
        return [arg for op, arg in instructions if op == name]

    assert all(arg.split()[0] == "python:3.11-slim" for arg in get("FROM")), get("FROM")
    assert get("USER")[-1] == f"{USER_ID}:{USER_ID}", "numeric, as runAsNonRoot needs"
    assert get("ENTRYPOINT") == ['["wakegate"]']
    exposed = {int(p) for arg in get("EXPOSE") for p in arg.split()}
    ports = {
        p["containerPort"] for d in of_kind(base, "Deployment") for p in only_container(d)["ports"]
    }
    assert exposed == ports == {8080, 8081}
    installs = [arg for arg in get("RUN") if "pip install" in arg]
    assert installs and not any("[" in arg or " -e " in arg for arg in installs), installs
    # No secret at build time or in the image: WAKEGATE_TOKEN comes from a Secret.
    for op, arg in instructions:
        assert not re.search(r"TOKEN|SECRET|PASSWORD|type=secret", arg, re.I), (op, arg)


def test_dockerignore_lets_in_only_what_the_image_is_built_from() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "an allow-list: nothing enters the build context by default"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            copied |= {source.rstrip("/") for source in shlex.split(arg)[:-1]}
    assert copied == allowed, f"COPY {sorted(copied)} vs .dockerignore {sorted(allowed)}"
    for source in copied:
        assert (REPO / source).exists(), source


# --------------------------------------------------------------------------- the renderer


def write(directory: Path, files: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(yaml.safe_dump_all(content))
    return directory


def object_id(obj: Obj) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize requires to be unique."""
    group, meta = obj["apiVersion"].rpartition("/")[0], obj["metadata"]
    return group, obj["kind"], meta.get("namespace", ""), meta["name"]


CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "c", "namespace": "n"},
    "data": {"a": "1", "b": "2"},
}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d", "namespace": "n"},
    "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "ghcr.io/o/x:1.0"}]}}},
}


def test_kustomize_renders_labels_patches_and_images(tmp_path: Path) -> None:
    write(
        tmp_path / "base",
        {
            "kustomization.yaml": [
                {
                    "resources": ["objects.yaml"],
                    "labels": [{"pairs": {"l": "v"}, "includeTemplates": True}],
                }
            ],
            "objects.yaml": [CONFIGMAP, DEPLOYMENT],
        },
    )
    write(
        tmp_path / "top",
        {
            "kustomization.yaml": [
                {
                    "resources": ["../base"],
                    "patches": [{"path": "patch.yaml"}],
                    "images": [{"name": "ghcr.io/o/x", "newTag": "2.0"}],
                }
            ],
            "patch.yaml": [{**CONFIGMAP, "data": {"a": "3", "b": None}}],
        },
    )
    objects = {object_id(obj): obj for obj in kustomize(tmp_path / "top")}
    assert objects[("", "ConfigMap", "n", "c")]["data"] == {"a": "3"}
    deployment = objects[("apps", "Deployment", "n", "d")]
    assert deployment["metadata"]["labels"] == {"l": "v"}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"l": "v"}
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/o/x:2.0"


@pytest.mark.parametrize(
    "kustomization, patch",
    [
        ({"resources": ["o.yaml", "o.yaml"]}, None),
        ({"resources": ["o.yaml"], "patches": [{"path": "p.yaml"}]}, {"data": ["list"]}),
        (
            {"resources": ["o.yaml"], "patches": [{"path": "p.yaml"}]},
            {"metadata": {"name": "other", "namespace": "n"}},
        ),
    ],
)
def test_kustomize_errors_are_raised(
    tmp_path: Path, kustomization: Obj, patch: Obj | None
) -> None:
    files: dict[str, Any] = {"kustomization.yaml": [kustomization], "o.yaml": [CONFIGMAP]}
    if patch is not None:
        files["p.yaml"] = [{**CONFIGMAP, **patch}]
    with pytest.raises(KustomizeError):
        kustomize(write(tmp_path, files))

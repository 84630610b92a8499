"""The Kubernetes manifests in k8s/: they parse, the overlays resolve, every resource
validates against its schema, and the RayService runs the project's own serve config.

No cluster: built-in kinds are checked against the Kubernetes JSON schemas of the
``kubernetes-validate`` package, RayService / RayJob / RayCronJob against the KubeRay
CRDs copied into tests/schemas/kuberay (unknown fields refused), and the overlays are
resolved by tests/k8s_render.py; where kubectl is installed, its embedded kustomize
must agree with that renderer.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fraudmesh.config import OnlineStoreKind, Settings
from orchestration import k8s
from tests.k8s_render import (
    KUSTOMIZATION_NAMES,
    KustomizeError,
    load_documents,
    render,
    split_image,
)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRD_DIR = Path(__file__).resolve().parent / "schemas" / "kuberay"
TARGETS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
KUBERNETES_VERSION = "1.32"
RAY_KINDS = {
    "RayService": "rayservices",
    "RayJob": "rayjobs",
    "RayCronJob": "raycronjobs",
}
PUBLIC_ROUTES = {
    "/v1/score",
    "/v1/score/batch",
    "/v1/labels",
    "/healthz",
    "/v1/webhooks/stripe",
}
SECRET_ENV = {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"}


@functools.cache
def rendered(target: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(TARGETS[target]))


def resources(target: str) -> list[dict[str, Any]]:
    """A private copy of an overlay's rendering (tests may mutate it)."""
    return copy.deepcopy(list(rendered(target)))


def one(items: list[dict[str, Any]], kind: str, name: str | None = None) -> dict:
    found = [
        r
        for r in items
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container (containers / initContainers) at any depth, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for i, container in enumerate(value):
                    yield f"{path}/{key}/{i}", container
            yield from containers(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from containers(item, f"{path}/{i}")


def ray_containers(items: list[dict[str, Any]]) -> Iterator[tuple[str, dict]]:
    """Containers of Ray nodes (head and workers) in the Ray custom resources."""
    for resource in items:
        if resource["kind"] in RAY_KINDS:
            for path, container in containers(resource["spec"]):
                if "submitterPodTemplate" not in path:
                    yield f"{resource['kind']}{path}", container


def serve_config() -> dict[str, Any]:
    return k8s.load_serve_config()


def rayservice_cluster(items: list[dict[str, Any]]) -> dict[str, Any]:
    return one(items, "RayService")["spec"]["rayClusterConfig"]


# -- parsing and resolving -----------------------------------------------------------


def test_every_manifest_file_parses() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        docs = load_documents(path)
        assert docs, f"{path} holds no YAML document"
        for doc in docs:
            if path.name in KUSTOMIZATION_NAMES:
                assert doc["kind"] == "Kustomization", path
            elif isinstance(doc, list):  # a JSON6902 patch
                assert all({"op", "path"} <= set(op) for op in doc), path
            elif path == k8s.POLICY_THRESHOLDS_PATH:  # ConfigMap file content
                assert doc == k8s.policy_thresholds(serve_config())
            else:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_overlay_resolves_to_the_whole_system(target: str) -> None:
    items = resources(target)
    kinds = sorted(r["kind"] for r in items)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Ingress",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "RayCronJob",
            "RayJob",
            "RayService",
            "Service",
            "Service",
            "Service",
            "StatefulSet",
        ]
    )
    namespaces = {r["metadata"].get("namespace") for r in items}
    expected = {"base": None, "dev": "fraudmesh-dev", "prod": "fraudmesh"}[target]
    assert namespaces == {expected}
    for resource in items:
        assert (
            resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fraudmesh"
        )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_kubectl_kustomize_agrees_with_the_test_renderer(target: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(TARGETS[target])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout

    def by_key(items: Any) -> dict[tuple, dict]:
        return {
            (r["kind"], r["metadata"]["name"], r["metadata"].get("namespace")): r
            for r in items
        }

    assert by_key(yaml.safe_load_all(out)) == by_key(resources(target))


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\nnamePrefix: x-\n"
    )
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    (tmp_path / "p.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: [1]}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches: [{path: p.yaml}]\n"
    )
    with pytest.raises(KustomizeError, match="JSON6902"):
        render(tmp_path)
    (tmp_path / "j.yaml").write_text("- {op: test, path: /data/k, value: w}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\n"
        "patches: [{path: j.yaml, target: {kind: ConfigMap, name: a}}]\n"
    )
    with pytest.raises(KustomizeError, match="test failed"):
        render(tmp_path)


# -- schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_builtin_kinds_validate_against_kubernetes_schemas(target: str) -> None:
    builtin = [r for r in resources(target) if not r["apiVersion"].startswith("ray.io")]
    assert len(builtin) == 11
    for resource in builtin:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{resource['kind']}/{resource['metadata']['name']}: "
                f"{where}: {exc.message}"
            )


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones (the
    API server prunes them silently; `kubectl --validate=strict` refuses them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    path = CRD_DIR / f"ray.io_{RAY_KINDS[kind]}.yaml"
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def crd_errors(resource: dict[str, Any]) -> list[str]:
    validator = crd_validator(resource["kind"])
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(resource)
    ]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ray_kinds_validate_against_kuberay_crds(target: str) -> None:
    ray = [r for r in resources(target) if r["apiVersion"].startswith("ray.io")]
    assert sorted(r["kind"] for r in ray) == sorted(RAY_KINDS)
    for resource in ray:
        assert resource["apiVersion"] == "ray.io/v1"
        errors = crd_errors(resource)
        assert not errors, f"{resource['kind']}: {errors[:5]}"


def test_crd_validation_catches_misspelt_and_unknown_fields() -> None:
    cron = one(resources("prod"), "RayCronJob")
    # Kubernetes' CronJob has concurrencyPolicy; this RayCronJob schema does not.
    cron["spec"]["concurrencyPolicy"] = "Forbid"
    assert any("concurrencyPolicy" in e for e in crd_errors(cron))

    service = one(resources("prod"), "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["template"]["spec"]["containers"][0]["resource"] = {}
    service["spec"]["rayClusterConfig"]["enableInTreeAutoscale"] = True
    errors = crd_errors(service)
    assert any("'resource'" in e for e in errors)
    assert any("enableInTreeAutoscale" in e for e in errors)


# -- cross-cutting rules -------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_container_has_cpu_and_memory_requests_and_limits(target: str) -> None:
    count = 0
    for resource in resources(target):
        for path, container in containers(resource):
            count += 1
            res = container.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(section, {})), (
                    f"{resource['kind']}/{resource['metadata']['name']}{path} "
                    f"({container['name']}) lacks {section}"
                )
    # head + worker, two job heads, two submitters, redis, jaeger
    assert count == 8
    autoscaler = rayservice_cluster(resources(target))["autoscalerOptions"]
    assert {"cpu", "memory"} <= set(autoscaler["resources"]["requests"])
    assert {"cpu", "memory"} <= set(autoscaler["resources"]["limits"])


_SECRET_PATTERNS = [
    re.compile(r"\b(sk|rk|pk)_(live|test)_[0-9A-Za-z]{6,}"),
    re.compile(r"\bwhsec_[0-9A-Za-z]{6,}"),
    # a URL with a password in it (user:password@host), placeholders <...> aside
    re.compile(r"://[^:/\s<>@]+:[^@\s<>]+@"),
]


def test_no_secret_value_in_any_file_under_k8s() -> None:
    for path in K8S.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for pattern in _SECRET_PATTERNS:
                assert not pattern.search(text), f"{path}: looks like a secret"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_secrets_are_referenced_never_inlined(target: str) -> None:
    items = resources(target)
    assert not [r for r in items if r["kind"] == "Secret"]
    for resource in items:
        for path, container in containers(resource):
            for env in container.get("env", []):
                if re.search(r"KEY|SECRET|PASSWORD|TOKEN", env["name"]):
                    assert "value" not in env, f"{path}: {env['name']} inlined"
                    assert "secretKeyRef" in env["valueFrom"], path
    for config_map in (r for r in items if r["kind"] == "ConfigMap"):
        for key in config_map["data"]:
            assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN", key), key
    for path, container in ray_containers(items):
        if "RayService" in path:
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
                for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert {
                "STRIPE_API_KEY": "fraudmesh-stripe",
                "STRIPE_WEBHOOK_SECRET": "fraudmesh-stripe",
            }.items() <= refs.items()


def test_example_secret_file_stays_out_of_every_kustomization() -> None:
    example = K8S / "secrets.example.yaml"
    docs = load_documents(example)
    assert {d["kind"] for d in docs} == {"Secret"}
    for doc in docs:
        assert set(doc["stringData"].values()) == {"REPLACE_ME"}
    for kustomization in K8S.rglob("kustomization.yaml"):
        (doc,) = load_documents(kustomization)
        listed = [
            *doc.get("resources", []),
            *(p.get("path", "") for p in doc.get("patches", [])),
        ]
        assert not [e for e in listed if "secret" in e], kustomization
    names = {d["metadata"]["name"] for d in docs}
    referenced = set()
    for resource in resources("prod"):
        for _, container in containers(resource):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
                    keys = next(
                        d["stringData"]
                        for d in docs
                        if d["metadata"]["name"] == ref["name"]
                    )
                    assert ref["key"] in keys, ref
    assert referenced == names


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["version"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_images_pinned_by_tag_never_latest(target: str) -> None:
    for resource in resources(target):
        for path, container in containers(resource):
            name, tag, digest = split_image(container["image"])
            assert tag or digest, f"{path}: {container['image']} has no tag"
            assert tag != "latest", f"{path}: {container['image']}"
            if name.endswith("/fraudmesh"):
                assert tag == project_version(), (
                    f"{path}: image tag {tag} is not the project version "
                    f"{project_version()}"
                )


# -- the RayService runs the project's serve config ---------------------------------


def test_generated_files_match_the_serve_config() -> None:
    stale = k8s.stale_files()
    assert not stale, (
        f"{[str(p.relative_to(ROOT)) for p in stale]} differ from "
        "orchestration/serve_config.yaml: run `make k8s` and commit the result"
    )


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_serve_config_v2_is_the_projects_serve_config(target: str) -> None:
    service = one(resources(target), "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    source = serve_config()
    assert embedded == k8s.cluster_serve_config(source)
    # The one difference, made explicit: the proxy listens on the pod's address.
    assert embedded["http_options"]["host"] == "0.0.0.0"
    embedded["http_options"]["host"] = source["http_options"]["host"]
    assert embedded == source


def test_serve_config_v2_is_a_valid_ray_serve_deploy_config() -> None:
    # Ray Serve's own schema of a multi-application config (what KubeRay submits to
    # the dashboard's REST API); importing it starts no Ray.
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(
        one(resources("prod"), "RayService")["spec"]["serveConfigV2"]
    )
    schema = ServeDeploySchema.model_validate(embedded)
    assert schema.http_options.host == "0.0.0.0"
    names = {d.name for app in schema.applications for d in app.deployments}
    assert {"Ingress", "Ingest", "Features", "Model", "Policy", "Actuation"} <= names


def test_cluster_serve_config_changes_only_the_host() -> None:
    source = serve_config()
    before = copy.deepcopy(source)
    cluster = k8s.cluster_serve_config(source)
    assert source == before
    assert k8s.CLUSTER_OVERRIDES == {"http_options": {"host": "0.0.0.0"}}
    assert {k: v for k, v in cluster.items() if k != "http_options"} == {
        k: v for k, v in source.items() if k != "http_options"
    }


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_policy_thresholds_config_map_equals_the_serve_config(target: str) -> None:
    config_map = one(resources(target), "ConfigMap", "fraudmesh-policy")
    thresholds = yaml.safe_load(config_map["data"]["policy.yaml"])
    assert thresholds == k8s.policy_thresholds(serve_config())
    assert thresholds, "the Policy deployment has no thresholds in its user_config"
    for _, container in ray_containers(resources(target)):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        if "policy" in mounts:
            assert mounts["policy"] == "/etc/fraudmesh/policy"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ray_autoscaler_and_worker_group_bounds(target: str) -> None:
    cluster = rayservice_cluster(resources(target))
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"
    (group,) = cluster["workerGroupSpecs"]
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] > group["minReplicas"]
    # Serve's autoscaling ceiling fits in the cluster's ceiling.
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    head_cpus = float(cluster["headGroupSpec"]["rayStartParams"]["num-cpus"])
    deployments = serve_config()["applications"][0]["deployments"]
    ceiling = sum(
        d["autoscaling_config"]["max_replicas"] * d["ray_actor_options"]["num_cpus"]
        for d in deployments
    )
    assert ceiling <= head_cpus + group["maxReplicas"] * float(limits["cpu"])


# -- wiring: environment, services, network ------------------------------------------


def ray_env(target: str) -> dict[str, str]:
    """The environment a RayService worker process sees (Secret values stand-ins)."""
    items = resources(target)
    env = dict(one(items, "ConfigMap", "fraudmesh-env")["data"])
    worker = rayservice_cluster(items)["workerGroupSpecs"][0]
    container = worker["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "fraudmesh-env"}}]
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = f"secret:{item['valueFrom']['secretKeyRef']['name']}"
    return env


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_environment_is_what_fraudmesh_settings_expects(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ray_env(target)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.online_store is OnlineStoreKind.REDIS
    assert settings.state_dir == Path("/var/lib/fraudmesh")
    assert settings.models_path == Path("/var/lib/fraudmesh/models")
    assert settings.stripe_api_key is not None
    mode = {"base": "dry-run", "dev": "dry-run", "prod": "live"}[target]
    assert settings.effective_actuation_mode.value == mode
    assert env["FRAUDMESH_LOG_FORMAT"] == "json"  # fraudmesh/logging.py reads it
    registry = settings.feast_registry
    if target == "dev":
        assert registry == "/tmp/fraudmesh/feast/registry.db"
    else:  # the PostgreSQL SQL registry URL, from a Secret
        assert registry == "secret:fraudmesh-feast-registry"


def _service_port(items: list[dict], url: str) -> tuple[dict, dict]:
    parsed = urlparse(url)
    service = one(items, "Service", parsed.hostname)
    ports = [p for p in service["spec"]["ports"] if p["port"] == parsed.port]
    assert len(ports) == 1, f"{url}: Service {parsed.hostname} has no such port"
    return service, ports[0]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_redis_and_jaeger_urls_reach_their_services(target: str) -> None:
    items = resources(target)
    env = ray_env(target)
    redis, _ = _service_port(items, env["REDIS_URL"])
    statefulset = one(items, "StatefulSet", "fraudmesh-redis")
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"].items() <= pod_labels.items()
    assert statefulset["spec"]["volumeClaimTemplates"], "Redis without persistence"
    assert (
        "--appendonly"
        in statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    )

    jaeger, port = _service_port(items, env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    protocol = env["OTEL_EXPORTER_OTLP_PROTOCOL"]
    assert (protocol, port["port"]) in {("grpc", 4317), ("http/protobuf", 4318)}
    assert {p["port"] for p in jaeger["spec"]["ports"]} == {4317, 4318, 16686}
    assert env["OTEL_SERVICE_NAME"] == "fraudmesh"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert 0.0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) <= 1.0


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ingress_routes_the_public_paths_to_the_serve_service(target: str) -> None:
    items = resources(target)
    ingress = one(items, "Ingress")
    service = one(items, "RayService")["spec"]["serveService"]
    port = serve_config()["http_options"]["port"]
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} == PUBLIC_ROUTES
    for path in paths:
        backend = path["backend"]["service"]
        assert backend == {
            "name": service["metadata"]["name"],
            "port": {"number": port},
        }
    assert [p["port"] for p in service["spec"]["ports"]] == [port]
    head = rayservice_cluster(items)["headGroupSpec"]["template"]["spec"]
    serve_ports = [p for p in head["containers"][0]["ports"] if p["name"] == "serve"]
    assert serve_ports == [{"name": "serve", "containerPort": port}]
    if target == "prod":
        assert ingress["spec"]["tls"] and ingress["spec"]["rules"][0]["host"]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_only_ray_pods_may_reach_redis(target: str) -> None:
    items = resources(target)
    policy = one(items, "NetworkPolicy")
    redis_pods = one(items, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_pods.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "only pod selectors, no wider peers"
            assert peer["podSelector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    # Redis pods themselves are no Ray nodes, nor is anything else but Ray pods.
    assert "ray.io/is-ray-node" not in redis_pods


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_disruption_budget_covers_the_serving_workers(target: str) -> None:
    items = resources(target)
    selector = one(items, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    cluster = rayservice_cluster(items)
    worker = cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    head = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    assert selector.items() <= worker.items()
    assert not selector.items() <= head.items()


# -- jobs ----------------------------------------------------------------------------


def _cli_options(command: str) -> set[str] | None:
    import typer.main

    from orchestration.cli import app

    group = typer.main.get_command(app)
    cmd = group.commands.get(command)
    if cmd is None:
        return None
    return {opt for param in cmd.params for opt in param.opts}


def _entrypoint_options(entrypoint: str) -> set[str]:
    return set(re.findall(r"(--[a-z-]+)", entrypoint))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_retraining_is_a_ray_cron_job_running_fraudmesh_train(target: str) -> None:
    cron = one(resources(target), "RayCronJob")
    spec = cron["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5, f"{spec['schedule']!r} is no five-field cron schedule"
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["suspend"] is (target == "dev")
    job = spec["jobTemplate"]
    assert job["entrypoint"].startswith("fraudmesh train ")
    used = _entrypoint_options(job["entrypoint"])
    assert {"--data", "--until"} <= used
    assert used <= _cli_options("train"), "entrypoint uses an option train lacks"
    # Daily schedule: one run must end before the next starts (no concurrencyPolicy).
    assert fields[2:] == ["*", "*", "*"]
    assert job["activeDeadlineSeconds"] < 24 * 3600
    assert job["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_materialisation_is_a_ray_job_running_fraudmesh_materialize(
    target: str,
) -> None:
    job = one(resources(target), "RayJob")["spec"]
    assert job["entrypoint"].startswith("fraudmesh materialize ")
    used = _entrypoint_options(job["entrypoint"])
    assert used == {"--data", "--until"}
    assert job["shutdownAfterJobFinishes"] is True
    options = _cli_options("materialize")
    if options is None:
        pytest.skip("`fraudmesh materialize` is not in orchestration/cli.py yet")
    assert used <= options


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_jobs_and_mesh_share_state_and_environment(target: str) -> None:
    items = resources(target)
    for path, container in ray_containers(items):
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/var/lib/fraudmesh") == "state", path
        assert mounts.get("/dev/shm") == "dshm", path
        assert container["envFrom"] == [{"configMapRef": {"name": "fraudmesh-env"}}]
    for resource in items:
        if resource["kind"] in RAY_KINDS:
            text = yaml.safe_dump(resource)
            assert "claimName: fraudmesh-state" in text
    assert one(items, "PersistentVolumeClaim", "fraudmesh-state")


def test_generator_notices_a_changed_serve_config(tmp_path: Path) -> None:
    config = serve_config()
    config["applications"][0]["deployments"][0]["autoscaling_config"][
        "max_replicas"
    ] += 1
    changed = tmp_path / "serve_config.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert k8s.stale_files(changed) == [k8s.SERVE_CONFIG_PATCH_PATH]
    assert k8s.stale_files() == []


def test_generator_cli_check_exits_zero_when_current() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(k8s.app, ["--check"])
    assert result.exit_code == 0, result.output


def test_serve_config_without_policy_is_a_config_error(tmp_path: Path) -> None:
    from fraudmesh.errors import ConfigError

    config = serve_config()
    deployments = config["applications"][0]["deployments"]
    config["applications"][0]["deployments"] = [
        d for d in deployments if d["name"] != k8s.POLICY_DEPLOYMENT
    ]
    with pytest.raises(ConfigError, match="Policy"):
        k8s.policy_thresholds(config)
    broken = tmp_path / "serve_config.yaml"
    broken.write_text("proxy_location: EveryNode\n")
    with pytest.raises(ConfigError, match="applications"):
        k8s.load_serve_config(broken)

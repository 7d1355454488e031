"""deploy/k8s and deploy/kserve, offline: schemas, the real kustomize render, and what the pods need.

Kubernetes objects validate against kubernetes-validate's strict OpenAPI schemas, KServe objects against
the vendored CRDs; both as written and as ``kubectl kustomize`` renders each overlay. Then the
properties that matter in a cluster: gRPC health probes, non-root read-only containers, resources, the
autoscaler's target, secrets by reference, the S3 store settings, the network policies.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from model_service.settings import ModelSettings
from protos.inference import grpc_service_pb2
from protos.lstm_stack.v1 import model_pb2, scaler_pb2
from scaler_service.settings import ScalerSettings
from service_common.artifacts import load_signing_key
from service_common.security import load_tokens
from service_common.server import build_server
from service_common.settings import ServerSettings, load_settings
from tests.deploy.manifests import (
    CRDS,
    K8S,
    KSERVE,
    KUBERNETES_VERSIONS,
    REPO,
    Doc,
    by_kind,
    container_port,
    containers,
    env_values,
    is_kserve,
    kustomization_dirs,
    load_documents,
    overlay_dirs,
    read_kustomization,
    render,
    service_module,
    source_objects,
    validate,
    validate_kserve,
    validate_kubernetes,
    workloads,
)
from tests.service_common.certs import make_tls_files

SCALER_SERVICE = scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"].full_name
MODEL_SERVICE = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
INFERENCE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# The grpc.health.v1 names each server registers (besides "", the whole server).
HEALTH_NAMES = {
    "scaler_service": {SCALER_SERVICE},
    "model_service": {MODEL_SERVICE, INFERENCE_SERVICE},
}
SETTINGS = {"scaler_service": ScalerSettings, "model_service": ModelSettings}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
# Every render a cluster would receive: each overlay, and the KServe example.
RENDERED = [*overlay_dirs(), KSERVE]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _settings_env(module: str) -> set[str]:
    settings = SETTINGS[module]
    return {f"{settings.ENV_PREFIX}{field.name.upper()}" for field in fields(settings)}


def _image_uid() -> int:
    match = re.search(r"^ARG APP_UID=(\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile no longer declares ARG APP_UID"
    return int(match.group(1))


def _all_containers() -> Iterator[tuple[str, Doc, Doc]]:
    """(render name, pod spec, container) for every container of every render."""
    for directory in RENDERED:
        for workload, container in containers(render(directory)):
            yield f"{_rel(directory)} {workload.source}", workload.pod, container


# --- the schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_in_the_sources_validates_against_its_schema(version: str) -> None:
    objects = source_objects()
    kinds = {doc["kind"] for _, doc in objects}
    # What the issue asks for is all there (a file dropped from a kustomization would vanish here).
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Secret",
        "ConfigMap",
        "ServingRuntime",
        "InferenceService",
    } <= kinds
    for path, doc in objects:
        try:
            validate(doc, version)
        except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            pytest.fail(f"{_rel(path)} {doc['kind']}/{doc['metadata']['name']}: {error}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", RENDERED, ids=_rel)
def test_every_rendered_object_validates_against_its_schema(directory: Path, version: str) -> None:
    docs = render(directory)
    assert docs, f"{_rel(directory)} renders nothing"
    for doc in docs:
        try:
            validate(doc, version)
        except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            pytest.fail(f"{_rel(directory)} {doc['kind']}/{doc['metadata']['name']}: {error}")


def test_the_validation_is_strict_enough_to_refuse_a_misspelt_or_mistyped_field() -> None:
    # The checks above mean something only if a slip fails them; one slip of each sort, deep down.
    deployment = next(doc for doc in render(overlay_dirs()[0]) if doc["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 1}
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    for broken in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_kubernetes(broken, KUBERNETES_VERSIONS[-1])
    runtime = next(doc for doc in render(KSERVE) if doc["kind"] == "ServingRuntime")
    misspelt_runtime = copy.deepcopy(runtime)
    misspelt_runtime["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(jsonschema.ValidationError, match="runAsNonroot"):
        validate_kserve(misspelt_runtime)
    service = next(doc for doc in render(KSERVE) if doc["kind"] == "InferenceService")
    mistyped_service = copy.deepcopy(service)
    mistyped_service["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(mistyped_service)


def test_every_manifest_file_is_a_kustomization_a_resource_or_a_patch() -> None:
    # A YAML file no kustomization mentions would never be validated nor applied.
    listed: set[Path] = set()
    for directory in kustomization_dirs():
        kustomization = read_kustomization(directory)
        listed |= {directory / "kustomization.yaml", *kustomization.resources, *kustomization.patches}
        for path in [*kustomization.resources, *kustomization.patches]:
            assert path.exists(), f"{_rel(directory)} lists {path}, which does not exist"
    files = {path.resolve() for path in [*K8S.rglob("*.yaml"), *KSERVE.glob("*.yaml")]}
    assert files - listed == set()


def test_the_vendored_kserve_crds_serve_the_kinds_used_and_name_their_source_and_license() -> None:
    served = {
        (crd["spec"]["group"], crd["spec"]["names"]["kind"], version["name"])
        for path in CRDS.glob("*.yaml")
        for crd in load_documents(path)
        for version in crd["spec"]["versions"]
        if version.get("served")
    }
    used = {
        (doc["apiVersion"].split("/")[0], doc["kind"], doc["apiVersion"].split("/")[1])
        for _, doc in source_objects()
        if is_kserve(doc)
    }
    assert used and used <= served
    assert "Apache License" in (CRDS / "LICENSE").read_text()
    readme = (CRDS / "README.md").read_text()
    assert "github.com/kserve/kserve" in readme
    assert re.search(r"\b[0-9a-f]{40}\b", readme), "the README must name the commit the CRDs came from"
    for path in CRDS.glob("*.yaml"):
        assert f"config/crd/full/{path.name}" in readme


def test_the_kserve_runtime_serves_the_open_inference_protocol_over_grpc_for_the_example() -> None:
    docs = render(KSERVE)
    [runtime] = by_kind(docs, "ServingRuntime")
    [service] = by_kind(docs, "InferenceService")
    [container] = runtime["spec"]["containers"]
    # gRPC only: KServe's grpc-v2; claiming v2 (REST) would let a REST InferenceService pick it.
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    formats = {(entry["name"], entry["version"]) for entry in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    # KServe exposes the first port and marks it HTTP/2 when its name holds "h2c" or "grpc".
    first = container["ports"][0]
    assert "h2c" in first["name"] or "grpc" in first["name"]
    assert first["containerPort"] == int(env_values(container)["LSTM_MODEL_PORT"])
    assert service_module(container) == "model_service"
    # No storage initializer: the service reads and polls the store itself.
    assert "storageUri" not in model and "storage" not in model
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    # The same image as the Kubernetes deployment.
    production = read_kustomization(K8S / "overlays" / "production").images["lstm-stack"]
    assert container["image"] == production


# --- what the pods need ----------------------------------------------------------------------------


def test_probes_are_grpc_health_checks_of_the_names_the_servers_register() -> None:
    checked = 0
    for name, _pod, container in _all_containers():
        module = service_module(container)
        port = container_port(container, "grpc", "h2c")
        serves_tls = any(key.endswith("_TLS_CERT") for key in env_values(container))
        for probe_name in PROBES:
            probe = container.get(probe_name)
            assert probe, f"{name}: no {probe_name}"
            if not serves_tls:
                # The kubelet's own grpc.health.v1 client.
                assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, name
                assert probe["grpc"]["port"] == port, f"{name} {probe_name} probes another port"
                service = probe["grpc"].get("service", "")
            else:
                # The kubelet's gRPC probe cannot speak TLS: the image's healthcheck does, over TLS.
                assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"exec"}, name
                command = probe["exec"]["command"]
                assert command[:4] == ["python", "-m", "service_common.healthcheck", f"127.0.0.1:{port}"]
                service = command[command.index("--service") + 1] if "--service" in command else ""
                assert env_values(container).get("LSTM_HEALTHCHECK_TLS_CA"), f"{name}: TLS probe without a CA"
            if probe_name == "readinessProbe":
                assert service in HEALTH_NAMES[module], f"{name}: readiness asks for {service!r}"
            else:
                assert service in {"", *HEALTH_NAMES[module]}, name
            checked += 1
    assert checked >= 3 * 5  # dev and production (2 Deployments each), the KServe runtime


def test_the_dev_overlay_and_the_kserve_runtime_use_the_kubelets_native_grpc_probe() -> None:
    for directory in [K8S / "overlays" / "dev", KSERVE]:
        for workload, container in containers(render(directory)):
            for probe_name in PROBES:
                assert "grpc" in container[probe_name], f"{_rel(directory)} {workload.source} {probe_name}"


def test_every_container_runs_as_the_images_non_root_user_on_a_read_only_root_filesystem() -> None:
    uid = _image_uid()
    for name, pod, container in _all_containers():
        pod_context = pod.get("securityContext", {})
        context = container["securityContext"]
        # A ServingRuntime has no pod-level securityContext: the container carries it all.
        effective = {**pod_context, **context}
        assert effective["runAsNonRoot"] is True, name
        assert effective.get("runAsUser") == uid, name
        assert effective["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert not context["capabilities"].get("add"), name
        assert not context.get("privileged"), name
        # Scratch space (TensorFlow, Keras, matplotlib) on an emptyDir, since / is read-only.
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], name


def test_the_kserve_pod_gets_the_file_group_the_secret_files_are_readable_by() -> None:
    # Secret files are mounted 0440 root:<fsGroup>; the ServingRuntime cannot set fsGroup, the
    # InferenceService's predictor (the pod spec) must.
    service = by_kind(render(KSERVE), "InferenceService")[0]
    assert service["spec"]["predictor"]["securityContext"]["fsGroup"] == _image_uid()
    for _name, pod, _container in _all_containers():
        if "securityContext" in pod:
            assert pod["securityContext"]["fsGroup"] == _image_uid()


def test_every_container_has_cpu_and_memory_requests_and_limits_and_a_worker_per_cpu() -> None:
    for name, _pod, container in _all_containers():
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{name}: {kind} {resources[kind]}"
        # The worker-process count follows this container's own CPU limit.
        workers = [entry for entry in container["env"] if entry["name"].endswith("_WORKERS")]
        prefix = SETTINGS[service_module(container)].ENV_PREFIX
        assert [entry["name"] for entry in workers] == [f"{prefix}WORKERS"], name
        assert workers[0]["valueFrom"]["resourceFieldRef"] == {
            "containerName": container["name"],
            "resource": "limits.cpu",
            "divisor": "1",
        }


@pytest.mark.parametrize("directory", overlay_dirs(), ids=_rel)
def test_the_autoscaler_targets_the_model_deployment_which_leaves_its_replicas_to_it(directory: Path) -> None:
    docs = render(directory)
    deployments = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Deployment")}
    model = [
        name
        for name, doc in deployments.items()
        if service_module(doc["spec"]["template"]["spec"]["containers"][0]) == "model_service"
    ]
    autoscalers = by_kind(docs, "HorizontalPodAutoscaler")
    assert len(model) == 1 and len(autoscalers) == 1
    spec = autoscalers[0]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": model[0]}
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert [metric["resource"]["name"] for metric in spec["metrics"]] == ["cpu"]
    # A replicas field would be reset by every apply, fighting the autoscaler.
    assert "replicas" not in deployments[model[0]]["spec"]
    # Each Deployment's pods are covered by exactly one disruption budget.
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [
            budget
            for budget in by_kind(docs, "PodDisruptionBudget")
            if budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1, name


def test_service_links_are_off_so_no_service_shadows_a_setting() -> None:
    # Service links would turn the Service lstm-model into LSTM_MODEL_PORT=tcp://..., a setting's name.
    settings_env = _settings_env("model_service") | _settings_env("scaler_service")
    for directory in overlay_dirs():
        services = [doc["metadata"]["name"] for doc in by_kind(render(directory), "Service")]
        links = {name.upper().replace("-", "_") + "_PORT" for name in services}
        assert links & settings_env == {"LSTM_MODEL_PORT", "LSTM_SCALER_PORT"}
    for directory in RENDERED:
        docs = render(directory)
        for workload in workloads(docs):
            # A ServingRuntime's pod spec is its InferenceService's predictor.
            pods = [workload.pod]
            if workload.source.startswith("ServingRuntime"):
                pods = [doc["spec"]["predictor"] for doc in by_kind(docs, "InferenceService")]
            assert pods and all(pod.get("enableServiceLinks") is False for pod in pods), workload.source


def test_every_lstm_variable_a_container_sets_is_a_setting_its_service_reads() -> None:
    healthcheck_env = {
        f"LSTM_HEALTHCHECK_TLS{suffix}" for suffix in ("", "_CA", "_CERT", "_KEY", "_SERVER_NAME")
    }
    for name, _pod, container in _all_containers():
        known = _settings_env(service_module(container)) | healthcheck_env
        names = {entry["name"] for entry in container["env"] if entry["name"].startswith("LSTM_")}
        assert names - known == set(), f"{name}: not settings of {service_module(container)}"


def test_the_ports_in_the_settings_probes_services_and_scrape_annotations_agree() -> None:
    for name, _pod, container in _all_containers():
        prefix = SETTINGS[service_module(container)].ENV_PREFIX
        env = env_values(container)
        assert int(env[f"{prefix}PORT"]) == container_port(container, "grpc", "h2c"), name
        assert env[f"{prefix}HOST"] == "0.0.0.0", name
        assert int(env[f"{prefix}METRICS_PORT"]) == container_port(container, "metrics"), name
        assert env[f"{prefix}METRICS_HOST"] == "0.0.0.0", name
    for directory in overlay_dirs():
        docs = render(directory)
        for deployment in by_kind(docs, "Deployment"):
            template = deployment["spec"]["template"]
            container = template["spec"]["containers"][0]
            assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == container_port(
                container, "metrics"
            )
            services = [
                doc
                for doc in by_kind(docs, "Service")
                if doc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
            ]
            assert len(services) == 1
            ports = {port["name"]: port for port in services[0]["spec"]["ports"]}
            assert (
                ports["grpc"]["targetPort"] == "grpc" and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
            )
            assert ports["metrics"]["targetPort"] == "metrics"


def test_the_model_service_reaches_the_scaler_service_by_its_service_name_and_port() -> None:
    scaler = [
        doc
        for doc in by_kind(render(K8S / "overlays" / "dev"), "Service")
        if doc["metadata"]["name"] == "lstm-scaler"
    ]
    [grpc_port] = [port["port"] for port in scaler[0]["spec"]["ports"] if port["name"] == "grpc"]
    for directory in RENDERED:
        for workload, container in containers(render(directory)):
            if service_module(container) == "model_service":
                address = env_values(container)["LSTM_MODEL_SCALER_ADDRESS"]
                assert address == f"lstm-scaler:{grpc_port}", f"{_rel(directory)} {workload.source}"


# --- secrets and the store -------------------------------------------------------------------------

# Settings that hold a secret VALUE (their *_FILE siblings hold a path and are fine).
SECRET_SETTINGS = {"auth_token", "signing_key", "scaler_token"}


def _secret_env_names(module: str) -> set[str]:
    prefix = SETTINGS[module].ENV_PREFIX
    names = {f"{prefix}{field.upper()}" for field in SECRET_SETTINGS if field in _field_names(module)}
    return names | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def _field_names(module: str) -> set[str]:
    return {field.name for field in fields(SETTINGS[module])}


def _secret_files(pod: Doc, container: Doc) -> dict[str, tuple[str, str]]:
    """Mounted path -> (Secret name, key) for every file a Secret puts in the container."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    files: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = [
            source["secret"]
            for source in volume.get("projected", {}).get("sources", [])
            if "secret" in source
        ]
        if "secret" in volume:
            sources.append({"name": volume["secret"]["secretName"], **volume["secret"]})
        for source in sources:
            assert mount.get("readOnly") is True, f"{mount['name']} holds secrets and must be read-only"
            assert source.get("items"), f"secret {source['name']}: list the keys this container needs"
            for item in source["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = (source["name"], item["key"])
    return files


def _secret_references(pod: Doc, container: Doc) -> set[tuple[str, str]]:
    refs = set(_secret_files(pod, container).values())
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs.add((ref["name"], ref["key"]))
    return refs


def _placeholder_secrets() -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in load_documents(K8S / "secrets" / "placeholders.yaml")}


def test_secrets_are_referenced_never_inlined() -> None:
    for name, pod, container in _all_containers():
        module = service_module(container)
        env = {entry["name"]: entry for entry in container["env"]}
        for secret_name in _secret_env_names(module):
            assert "value" not in env.get(secret_name, {}), f"{name}: {secret_name} has a literal value"
        # Every file setting (tokens, keys, certificates) points at a file a Secret mounts.
        files = _secret_files(pod, container)
        for key, value in env_values(container).items():
            if key.endswith(("_FILE", "_TLS_CERT", "_TLS_KEY", "_TLS_CA")):
                assert value in files, f"{name}: {key}={value} is not a mounted secret file"
        assert _secret_references(pod, container), f"{name} reads no secret at all"
    for directory in RENDERED:
        for config_map in by_kind(render(directory), "ConfigMap"):
            keys = set(config_map.get("data", {}))
            assert not {key for key in keys if re.search("TOKEN|SECRET|PASSWORD|SIGNING_KEY", key)}, keys


def test_the_dev_render_holds_every_secret_key_its_pods_read() -> None:
    docs = render(K8S / "overlays" / "dev")
    secrets = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Secret")}
    for workload, container in containers(docs):
        for secret, key in _secret_references(workload.pod, container):
            assert secret in secrets, f"{workload.source} reads the Secret {secret}, which is not rendered"
            assert key in {**secrets[secret].get("data", {}), **secrets[secret].get("stringData", {})}


def test_production_applies_no_secret_and_reads_only_names_and_keys_the_placeholders_list() -> None:
    # An apply must never overwrite the real Secrets; the placeholders are the list to create.
    docs = render(K8S / "overlays" / "production")
    assert by_kind(docs, "Secret") == []
    placeholders = {
        (name, key) for name, doc in _placeholder_secrets().items() for key in doc.get("stringData", {})
    }
    read = {
        ref for workload, container in containers(docs) for ref in _secret_references(workload.pod, container)
    }
    assert read and read <= placeholders
    # ... and everything the placeholders list is read by production or the KServe runtime.
    read_anywhere = read | {
        ref
        for workload, container in containers(render(KSERVE))
        for ref in _secret_references(workload.pod, container)
    }
    assert placeholders - read_anywhere == set()


def test_the_placeholder_secrets_are_marked_and_make_the_services_refuse_to_start(tmp_path: Path) -> None:
    secrets = _placeholder_secrets()
    assert all(
        doc["metadata"]["annotations"]["lstm-stack.io/placeholder"] == "true" for doc in secrets.values()
    )
    for key, text in secrets["lstm-stack-auth"]["stringData"].items():
        token_file = tmp_path / key
        token_file.write_text(text)
        # A token file without a token is refused: the service does not start with auth silently off.
        with pytest.raises(ValueError, match="holds no token"):
            load_tokens("", str(token_file))
    for key, text in secrets["lstm-stack-signing"]["stringData"].items():
        key_file = tmp_path / key
        key_file.write_text(text)
        with pytest.raises(ValueError, match="shorter than 16"):
            load_signing_key("", str(key_file), tmp_path / "store")


def test_every_service_reads_its_store_from_s3_with_the_endpoint_region_and_credentials() -> None:
    for directory in RENDERED:
        docs = render(directory)
        config_maps = {doc["metadata"]["name"]: doc["data"] for doc in by_kind(docs, "ConfigMap")}
        for workload, container in containers(docs):
            name = f"{_rel(directory)} {workload.source}"
            env = dict(env_values(container))
            for source in container.get("envFrom", []):
                env.update(config_maps.get(source["configMapRef"]["name"], {}))
            if directory == KSERVE:
                # The KServe example shares the k8s base's ConfigMap (same namespace).
                assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [
                    "lstm-stack-store"
                ]
                env.update(by_kind(render(overlay_dirs()[0]), "ConfigMap")[0]["data"])
            prefix = SETTINGS[service_module(container)].ENV_PREFIX
            assert env[f"{prefix}STORE"].startswith("s3://"), name
            assert re.fullmatch(r"https?://[^/\s]+/?", env["AWS_ENDPOINT_URL"]), name
            assert env["AWS_REGION"], name
            refs = {
                entry["name"]: entry["valueFrom"]["secretKeyRef"]
                for entry in container["env"]
                if "secretKeyRef" in entry.get("valueFrom", {})
            }
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(refs), name
            # Every replica verifies what another signed: the key is a shared Secret, never a
            # per-pod <store>/.signing-key.
            assert env[f"{prefix}SIGNING_KEY_FILE"].startswith("/run/secrets/"), name


@pytest.mark.parametrize("directory", overlay_dirs(), ids=_rel)
def test_each_overlay_sets_the_image_and_the_namespace_under_the_restricted_pod_security_standard(
    directory: Path,
) -> None:
    docs = render(directory)
    namespaces = by_kind(docs, "Namespace")
    assert len(namespaces) == 1
    namespace = namespaces[0]["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {
        namespace["name"]
    }
    image = read_kustomization(directory).images["lstm-stack"]
    for workload, container in containers(docs):
        assert container["image"] == image, f"{workload.source} runs {container['image']}, not {image}"


# --- network policy --------------------------------------------------------------------------------


def _peer_matches(
    peer: Doc, labels: dict[str, str], namespace_labels: dict[str, str], same_namespace: bool
) -> bool:
    pod_ok = peer.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
    if "namespaceSelector" in peer:
        return pod_ok and peer["namespaceSelector"].get("matchLabels", {}).items() <= namespace_labels.items()
    return same_namespace and "podSelector" in peer and pod_ok


def _port_matches(rules_ports: list[Doc], port: int, port_name: str | None) -> bool:
    return any(entry["port"] in (port, port_name) for entry in rules_ports)


def allows_ingress(
    policies: list[Doc],
    target: dict[str, str],
    source: dict[str, str],
    port: int,
    port_name: str,
    source_namespace: dict[str, str] | None = None,
) -> bool:
    """Does some policy selecting ``target`` let ``source`` in on that port (NetworkPolicy semantics)?"""
    same_namespace = source_namespace is None
    namespace_labels = source_namespace or {}
    selecting = [
        policy
        for policy in policies
        if policy["spec"]["podSelector"]["matchLabels"].items() <= target.items()
    ]
    assert selecting, f"no policy selects {target}: it would accept anything"
    return any(
        any(_peer_matches(peer, source, namespace_labels, same_namespace) for peer in rule.get("from", []))
        and _port_matches(rule.get("ports", []), port, port_name)
        for policy in selecting
        for rule in policy["spec"].get("ingress", [])
    )


def allows_egress(policies: list[Doc], source: dict[str, str], target: dict[str, str], port: int) -> bool:
    selecting = [
        policy
        for policy in policies
        if policy["spec"]["podSelector"]["matchLabels"].items() <= source.items()
    ]
    return any(
        any(_peer_matches(peer, target, {}, True) for peer in rule["to"])
        and _port_matches(rule.get("ports", []), port, None)
        for policy in selecting
        for rule in policy["spec"].get("egress", [])
        if "to" in rule
    )


def test_the_network_policies_let_the_model_reach_the_scaler_prometheus_scrape_and_nobody_else_in() -> None:
    docs = render(K8S / "overlays" / "production")
    policies = by_kind(docs, "NetworkPolicy")
    assert all(set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"} for policy in policies)
    pods = {doc["metadata"]["name"]: doc["spec"]["template"] for doc in by_kind(docs, "Deployment")}
    scaler, model = (pods[name]["metadata"]["labels"] for name in ("lstm-scaler", "lstm-model"))
    scaler_port = container_port(pods["lstm-scaler"]["spec"]["containers"][0], "grpc")
    model_port = container_port(pods["lstm-model"]["spec"]["containers"][0], "grpc")
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    stranger = {"app.kubernetes.io/name": "something-else"}
    client = {"lstm-stack.io/client": "true"}

    assert allows_ingress(policies, scaler, model, scaler_port, "grpc")
    assert allows_egress(policies, model, scaler, scaler_port)
    assert allows_ingress(policies, model, client, model_port, "grpc")
    assert allows_ingress(policies, scaler, client, scaler_port, "grpc")
    for target in (scaler, model):
        assert allows_ingress(policies, target, {}, 9090, "metrics", source_namespace=monitoring)
        assert not allows_ingress(policies, target, stranger, 9090, "metrics")
        assert not allows_ingress(policies, target, stranger, scaler_port, "grpc")
        assert not allows_ingress(policies, target, stranger, model_port, "grpc")
        assert not allows_ingress(policies, target, {}, scaler_port, "grpc", source_namespace=monitoring)
    # The scaler service never calls the model service.
    assert not allows_ingress(policies, model, scaler, model_port, "grpc")
    # KServe's predictor pods (labels from the ServingRuntime) may call the scaler service too.
    [runtime] = by_kind(render(KSERVE), "ServingRuntime")
    assert allows_ingress(policies, scaler, runtime["spec"]["labels"], scaler_port, "grpc")


# --- the production probes, run for real ------------------------------------------------------------


def _materialize_secret_files(pod: Doc, container: Doc, root: Path, tls_dir: Path) -> dict[str, str]:
    """Write a file for every mounted secret file under ``root``; return mounted path -> local path."""
    tls = make_tls_files(tls_dir, server_names=("lstm-scaler", "lstm-model"))
    contents = {
        "tls.crt": tls.server_cert.read_bytes(),
        "tls.key": tls.server_key.read_bytes(),
        "ca.crt": tls.ca.read_bytes(),
    }
    mapping: dict[str, str] = {}
    for mounted, (_secret, key) in _secret_files(pod, container).items():
        local = root / mounted.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(contents.get(key, b"a-test-value-that-is-long-enough-0123456789\n"))
        mapping[mounted] = str(local)
    return mapping


@pytest.mark.parametrize("module", ["scaler_service", "model_service"])
def test_the_production_tls_probes_pass_against_a_server_started_with_the_production_settings(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(K8S / "overlays" / "production")
    [(workload, container)] = [
        (workload, container)
        for workload, container in containers(docs)
        if service_module(container) == module
    ]
    files = _materialize_secret_files(workload.pod, container, tmp_path / "pod", tmp_path / "tls")
    env = {key: files.get(value, value) for key, value in env_values(container).items()}
    # The server's own settings, as the container's environment gives them (the port aside).
    for key in list(os.environ):
        if key.startswith("LSTM_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings: ServerSettings = load_settings(SETTINGS[module], ["--host", "127.0.0.1", "--port", "0"])
    assert settings.tls_cert and settings.tls_key, "production must serve TLS"
    names = sorted(HEALTH_NAMES[module])
    server, port = build_server(settings, lambda _server: names)
    server.start()
    try:
        probe_env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        probe_env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "clients" / "python")])
        container_grpc = container_port(container, "grpc")
        for probe_name in PROBES:
            command = [
                part.replace(f"127.0.0.1:{container_grpc}", f"127.0.0.1:{port}")
                for part in container[probe_name]["exec"]["command"]
            ]
            result = subprocess.run(command, env=probe_env, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"{probe_name}: {result.stdout}{result.stderr}"
            assert "(tls)" in result.stdout
        # What the kubelet's native gRPC probe would do: plaintext, which a TLS server never answers.
        plain = {key: value for key, value in probe_env.items() if not key.startswith("LSTM_HEALTHCHECK_")}
        result = subprocess.run(
            ["python", "-m", "service_common.healthcheck", f"127.0.0.1:{port}", "--timeout", "1"],
            env=plain,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
    finally:
        server.stop(0)

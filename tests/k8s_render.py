"""A small Kustomize renderer for the tests: the subset that k8s/ uses, no binary.

There is no kustomize binary on the build machines (kubectl, where present, embeds
one; tests/test_k8s_manifests.py compares this renderer with it when it exists). So
the tests resolve the overlays here, with kustomize's semantics for exactly these
features, and refuse anything else so that an overlay cannot silently depend on a
feature this renderer ignores:

- ``resources``: YAML files (multi-document) and directories holding a kustomization;
- ``namespace``: set on every namespaced resource;
- ``labels``: ``pairs`` added to ``metadata.labels`` (``includeSelectors`` and
  ``includeTemplates`` must stay false, their defaults);
- ``images``: ``name`` -> ``newName`` / ``newTag`` / ``digest`` in every
  ``containers`` / ``initContainers`` list at any depth (kustomize does so in custom
  resources too);
- ``configMapGenerator``: ``literals`` and ``files`` (``key=path`` or ``path``), with
  ``behavior`` create, merge or replace; ``generatorOptions.disableNameSuffixHash``
  must be true (see k8s/base/kustomization.yaml for why);
- ``patches``: a strategic-merge patch (a mapping; only maps and scalars, since for
  custom resources kustomize replaces lists wholesale while for built-in kinds it
  merges them by key: use JSON6902 for anything inside a list) or a JSON6902 patch
  (a list of add / remove / replace / test operations) with a ``target``.

Transformers run in kustomize's order: patches, namespace, labels, images.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "configMapGenerator",
    "generatorOptions",
    "patches",
}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
}


class KustomizeError(Exception):
    """A kustomization uses an unsupported feature or does not resolve."""


def load_documents(path: Path) -> list[Resource]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise KustomizeError(f"{directory}: no kustomization file")


def render(directory: Path) -> list[Resource]:
    """The resources ``kubectl kustomize directory`` would print (any order)."""
    directory = Path(directory)
    kustomization = load_documents(find_kustomization(directory))[0]
    unsupported = set(kustomization) - SUPPORTED_KEYS
    if unsupported:
        raise KustomizeError(
            f"{directory}: kustomization uses {sorted(unsupported)}, which "
            "tests/k8s_render.py does not implement; keep to "
            f"{sorted(SUPPORTED_KEYS)} or extend the renderer"
        )
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        resources.extend(_load_resource(directory, entry))
    _generate_config_maps(directory, kustomization, resources)
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, resources)
    if "namespace" in kustomization:
        _set_namespace(resources, kustomization["namespace"])
    for spec in kustomization.get("labels", []):
        _add_labels(resources, spec)
    for image in kustomization.get("images", []):
        for resource in resources:
            _retag(resource, image)
    _check_unique(directory, resources)
    return resources


def _load_resource(directory: Path, entry: str) -> list[Resource]:
    path = (directory / entry).resolve()
    if path.is_dir():
        return render(path)
    if not path.is_file():
        raise KustomizeError(f"{directory}: resource {entry!r} does not exist")
    return load_documents(path)


def _check_unique(directory: Path, resources: list[Resource]) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    for resource in resources:
        key = resource_key(resource)
        if key in seen:
            raise KustomizeError(f"{directory}: resource {key} appears twice")
        seen.add(key)


def resource_key(resource: Resource) -> tuple[str, str, str | None]:
    """(kind, name, namespace): how kustomize tells resources apart here."""
    meta = resource.get("metadata", {})
    return (resource["kind"], meta["name"], meta.get("namespace"))


# -- configMapGenerator ---------------------------------------------------------


def _generate_config_maps(
    directory: Path, kustomization: dict[str, Any], resources: list[Resource]
) -> None:
    generators = kustomization.get("configMapGenerator", [])
    if not generators:
        return
    options = kustomization.get("generatorOptions", {})
    if options != {"disableNameSuffixHash": True}:
        raise KustomizeError(
            f"{directory}: configMapGenerator needs generatorOptions "
            "{disableNameSuffixHash: true} here (got "
            f"{options!r}); hashed names are not rewritten inside RayService pods"
        )
    for generator in generators:
        _run_generator(directory, generator, resources)


def _generator_data(directory: Path, generator: dict[str, Any]) -> dict[str, str]:
    unsupported = set(generator) - {"name", "literals", "files", "behavior"}
    if unsupported:
        raise KustomizeError(
            f"{directory}: configMapGenerator {generator.get('name')!r} uses "
            f"{sorted(unsupported)}, which the test renderer does not implement"
        )
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"{directory}: literal {literal!r} has no '='")
        data[key] = value
    for item in generator.get("files", []):
        key, sep, rel = item.partition("=")
        if not sep:
            key, rel = Path(item).name, item
        path = (directory / rel).resolve()
        if directory.resolve() not in path.parents:
            raise KustomizeError(
                f"{directory}: file {rel!r} is outside the kustomization root; "
                "kustomize refuses it (load restrictor)"
            )
        data[key] = path.read_text(encoding="utf-8")
    return data


def _run_generator(
    directory: Path, generator: dict[str, Any], resources: list[Resource]
) -> None:
    name = generator["name"]
    behavior = generator.get("behavior", "create")
    data = _generator_data(directory, generator)
    existing = [
        r
        for r in resources
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == name
    ]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{directory}: ConfigMap {name!r} already exists")
        resources.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": data,
            }
        )
        return
    if behavior not in ("merge", "replace"):
        raise KustomizeError(f"{directory}: unknown behavior {behavior!r}")
    if len(existing) != 1:
        raise KustomizeError(
            f"{directory}: behavior {behavior} needs exactly one ConfigMap "
            f"{name!r} from the resources, found {len(existing)}"
        )
    target = existing[0]
    if behavior == "replace":
        target["data"] = data
    else:
        target.setdefault("data", {}).update(data)


# -- patches --------------------------------------------------------------------


def _apply_patch(
    directory: Path, spec: dict[str, Any], resources: list[Resource]
) -> None:
    unsupported = set(spec) - {"path", "patch", "target"}
    if unsupported:
        raise KustomizeError(f"{directory}: patch options {sorted(unsupported)}")
    if "path" in spec:
        text = (directory / spec["path"]).read_text(encoding="utf-8")
    else:
        text = spec["patch"]
    body = yaml.safe_load(text)
    target = spec.get("target")
    if isinstance(body, list):
        if not target:
            raise KustomizeError(f"{directory}: a JSON6902 patch needs a target")
        matches = _select(resources, target)
        for resource in matches:
            _json6902(resource, body, where=f"{directory}: {spec.get('path', '')}")
    elif isinstance(body, dict):
        _reject_lists(body, where=f"{directory}: {spec.get('path', 'inline patch')}")
        if target is None:
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        matches = _select(resources, target)
        for resource in matches:
            _merge(resource, {k: v for k, v in body.items() if k != "apiVersion"})
    else:
        raise KustomizeError(f"{directory}: patch is neither a mapping nor a list")
    if not matches:
        raise KustomizeError(f"{directory}: patch target {target} matches nothing")


def _select(resources: list[Resource], target: dict[str, Any]) -> list[Resource]:
    unsupported = set(target) - {"kind", "name", "group", "version", "namespace"}
    if unsupported:
        raise KustomizeError(f"target selectors {sorted(unsupported)} not supported")
    out = []
    for resource in resources:
        group, _, version = resource["apiVersion"].rpartition("/")
        meta = resource["metadata"]
        if (
            target.get("kind", resource["kind"]) == resource["kind"]
            and target.get("name", meta["name"]) == meta["name"]
            and target.get("group", group) == group
            and target.get("version", version) == version
            and target.get("namespace", meta.get("namespace")) == meta.get("namespace")
        ):
            out.append(resource)
    return out


def _reject_lists(value: Any, where: str) -> None:
    if isinstance(value, list):
        raise KustomizeError(
            f"{where}: a strategic-merge patch with a list; kustomize merges lists "
            "by key for built-in kinds but replaces them in custom resources. Use "
            "a JSON6902 patch for list entries"
        )
    if isinstance(value, dict):
        for item in value.values():
            _reject_lists(item, where)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 merge: maps merge, null deletes, scalars replace."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _walk(document: Any, parts: list[str], path: str) -> Any:
    node = document
    for part in parts:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise KustomizeError(f"JSON6902 path {path!r} not found") from exc
    return node


def _json6902(resource: Resource, operations: list[dict[str, Any]], where: str) -> None:
    for op in operations:
        path = op["path"]
        parts = _pointer(path)
        parent = _walk(resource, parts[:-1], path)
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            if _walk(resource, parts, path) != op["value"]:
                raise KustomizeError(
                    f"{where}: test failed at {path}: found "
                    f"{_walk(resource, parts, path)!r}, expected {op['value']!r}"
                )
        elif kind == "remove":
            _walk(resource, parts, path)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                if last == "-" and kind == "add":
                    parent.append(value)
                elif kind == "add":
                    parent.insert(int(last), value)
                else:
                    _walk(resource, parts, path)
                    parent[int(last)] = value
            else:
                if kind == "replace":
                    _walk(resource, parts, path)
                parent[last] = value
        else:
            raise KustomizeError(f"{where}: JSON6902 op {kind!r} not supported")


# -- namespace, labels, images ----------------------------------------------------


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for resource in resources:
        if resource["kind"] not in CLUSTER_SCOPED_KINDS:
            resource["metadata"]["namespace"] = namespace


def _add_labels(resources: list[Resource], spec: dict[str, Any]) -> None:
    if spec.get("includeSelectors") or spec.get("includeTemplates"):
        raise KustomizeError(
            "labels with includeSelectors/includeTemplates are not implemented"
        )
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(spec["pairs"])


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
    return name, tag, digest or None


def _retag(node: Any, image: dict[str, Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _retag(item, image)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                if isinstance(container, dict) and "image" in container:
                    container["image"] = _new_image(container["image"], image)
        _retag(value, image)


def _new_image(current: str, image: dict[str, Any]) -> str:
    name, tag, digest = split_image(current)
    if name != image["name"]:
        return current
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    text = f"{name}:{tag}" if tag else name
    return f"{text}@{digest}" if digest and "newTag" not in image else text

"""A small, honest subset of kustomize: renders manifests/ without the binary.

`render(directory)` returns the objects `kustomize build directory` would
produce, as plain dicts (not sorted: compare them as a set). Supported in a
kustomization.yaml, and nothing else:

- ``resources``: YAML files inside the kustomization's directory (documents
  with apiVersion, kind and metadata.name), or directories holding a
  kustomization.yaml (rendered recursively, e.g. ``../../base``);
- ``labels``: ``pairs`` added to every object's metadata.labels and, with
  ``includeTemplates: true``, to the pod template labels of workloads.
  ``includeSelectors: true`` (and the deprecated ``commonLabels``) is not
  supported: write selectors out in full;
- ``images``: ``name`` with ``newName``, ``newTag`` and/or ``digest``, applied
  to every container and init container;
- ``patches``: ``path`` of a strategic-merge patch that names its target by
  apiVersion, kind, name and namespace. Maps merge, a null value deletes the
  key, scalars replace; lists are not supported (strategic merge merges them
  by key, which this renderer does not implement).

Transformers run in kustomize's order (patches, labels, images). Anything
else, an unknown field, a patch matching no object or two objects with the same
id, raises `KustomizeError`, so a manifest that relies on a feature this
renderer lacks fails loudly instead of rendering wrong.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render"]

Obj = dict[str, Any]

KUSTOMIZATION_FIELDS = frozenset({"apiVersion", "kind", "resources", "labels", "images", "patches"})
LABEL_FIELDS = frozenset({"pairs", "includeSelectors", "includeTemplates"})
IMAGE_FIELDS = frozenset({"name", "newName", "newTag", "digest"})
PATCH_FIELDS = frozenset({"path"})
# Pod template label paths of kustomize's built-in field specs.
TEMPLATE_LABELS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "metadata", "labels"),
    "ReplicaSet": ("spec", "template", "metadata", "labels"),
    "StatefulSet": ("spec", "template", "metadata", "labels"),
    "DaemonSet": ("spec", "template", "metadata", "labels"),
    "Job": ("spec", "template", "metadata", "labels"),
    "ReplicationController": ("spec", "template", "metadata", "labels"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "metadata", "labels"),
}
CONTAINER_LISTS = ("containers", "initContainers")


class KustomizeError(Exception):
    """The kustomization is invalid or uses a feature this renderer lacks."""


def render(directory: str | Path) -> list[Obj]:
    """The objects of the kustomization in `directory`."""
    return _render(Path(directory).resolve(), ())


def object_id(obj: Obj) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize requires to be unique."""
    group = obj["apiVersion"].rpartition("/")[0]
    meta = obj["metadata"]
    return group, obj["kind"], meta.get("namespace") or "", meta["name"]


def _render(directory: Path, stack: tuple[Path, ...]) -> list[Obj]:
    if directory in stack:
        raise KustomizeError(f"{directory}: kustomization cycle")
    file = directory / "kustomization.yaml"
    if not file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    kustomization = _load_one(file)
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{file}: unsupported field(s) {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{file}: kind must be Kustomization")

    objects: list[Obj] = []
    seen: set[tuple[str, str, str, str]] = set()
    for entry in _list(kustomization, "resources", file):
        if not isinstance(entry, str) or "://" in entry:
            raise KustomizeError(f"{file}: resources: {entry!r} must be a local path")
        path = (directory / entry).resolve()
        if path.is_dir():
            loaded = _render(path, (*stack, directory))
        elif path.is_file():
            if directory not in path.parents:
                raise KustomizeError(f"{file}: {entry} is a file outside the kustomization")
            loaded = _load_objects(path)
        else:
            raise KustomizeError(f"{file}: resources: {entry} does not exist")
        for obj in loaded:
            key = object_id(obj)
            if key in seen:
                raise KustomizeError(f"{file}: {key} is defined twice")
            seen.add(key)
            objects.append(obj)

    for entry in _list(kustomization, "patches", file):
        _check_fields(entry, PATCH_FIELDS, file, "patches")
        path = (directory / entry["path"]).resolve()
        if directory not in path.parents or not path.is_file():
            raise KustomizeError(f"{file}: patch {entry['path']} is not a file in the directory")
        for patch in _load_objects(path):
            _apply_patch(objects, patch, path)

    for entry in _list(kustomization, "labels", file):
        _check_fields(entry, LABEL_FIELDS, file, "labels")
        if entry.get("includeSelectors", False):
            raise KustomizeError(f"{file}: labels: includeSelectors: true is not supported")
        pairs = entry.get("pairs") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
            raise KustomizeError(f"{file}: labels: pairs must map strings to strings")
        for obj in objects:
            _add_labels(obj, ("metadata", "labels"), pairs)
            template = TEMPLATE_LABELS.get(obj["kind"])
            if entry.get("includeTemplates", False) and template:
                _add_labels(obj, template, pairs)

    for entry in _list(kustomization, "images", file):
        _check_fields(entry, IMAGE_FIELDS, file, "images")
        if "name" not in entry:
            raise KustomizeError(f"{file}: images: every entry needs a name")
        for obj in objects:
            _set_images(obj, entry)
    return objects


def _load_one(file: Path) -> Obj:
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict):
        raise KustomizeError(f"{file}: must be a YAML mapping")
    return data


def _load_objects(file: Path) -> list[Obj]:
    objects = []
    for doc in yaml.safe_load_all(file.read_text()):
        if doc is None:
            continue
        if not (
            isinstance(doc, dict)
            and isinstance(doc.get("apiVersion"), str)
            and isinstance(doc.get("kind"), str)
            and isinstance(doc.get("metadata"), dict)
            and isinstance(doc["metadata"].get("name"), str)
        ):
            raise KustomizeError(f"{file}: every document needs apiVersion, kind, metadata.name")
        if doc["kind"].endswith("List"):
            raise KustomizeError(f"{file}: {doc['kind']} is not supported")
        objects.append(doc)
    return objects


def _list(kustomization: Obj, field: str, file: Path) -> list[Any]:
    value = kustomization.get(field) or []
    if not isinstance(value, list):
        raise KustomizeError(f"{file}: {field} must be a list")
    return value


def _check_fields(entry: object, allowed: frozenset[str], file: Path, field: str) -> None:
    if not isinstance(entry, dict):
        raise KustomizeError(f"{file}: {field}: every entry must be a mapping")
    unknown = set(entry) - allowed
    if unknown:
        raise KustomizeError(f"{file}: {field}: unsupported field(s) {sorted(unknown)}")


def _apply_patch(objects: list[Obj], patch: Obj, path: Path) -> None:
    targets = [obj for obj in objects if object_id(obj) == object_id(patch)]
    if len(targets) != 1:
        raise KustomizeError(f"{path}: the patch matches {len(targets)} objects, not one")
    _merge(targets[0], patch, path, "")


def _merge(target: Obj, patch: Obj, path: Path, where: str) -> None:
    for key, value in patch.items():
        here = f"{where}.{key}"
        if isinstance(key, str) and key.startswith("$"):
            raise KustomizeError(f"{path}: {here}: patch directives are not supported")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, list):
            raise KustomizeError(f"{path}: {here}: lists in patches are not supported")
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, path, here)
        else:
            target[key] = copy.deepcopy(value)


def _add_labels(obj: Obj, path: tuple[str, ...], pairs: dict[str, str]) -> None:
    node = obj
    for key in path:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    node.update(pairs)


def _set_images(node: Any, entry: Obj) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, entry)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in CONTAINER_LISTS and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _new_image(container["image"], entry)
            _set_images(value, entry)


def _new_image(image: str, entry: Obj) -> str:
    name, _, digest = image.partition("@")
    tag = ""
    if ":" in name.rpartition("/")[2]:
        name, _, tag = name.rpartition(":")
    if name != entry["name"]:
        return image
    name = entry.get("newName", name)
    if "digest" in entry:
        return f"{name}@{entry['digest']}"
    if "newTag" in entry:
        return f"{name}:{entry['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

"""Kubernetes manifests: follow a kustomize tree offline and validate every object.

:func:`collect` reads a folder with a ``kustomization.yaml`` the way ``kubectl apply -k``
finds objects: the ``resources:`` entries, files and folders (other kustomizations),
recursively. It cannot render what kustomize would *generate or change* (generators,
patches, components, ...); each such field is reported as a problem naming it, and the
objects listed in ``resources`` are still checked as written. To check such a tree, render it
first (``kubectl kustomize DIR > all.yaml``) and check the file. A folder without a
kustomization is read as ``kubectl apply -f DIR`` reads it (its ``.yaml``, ``.yml`` and
``.json`` files), and a file as it is.

:func:`object_problems` validates one object with ``kubernetes-validate`` (the Kubernetes
OpenAPI schemas, strict: unknown fields are errors) for each Kubernetes version asked.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .problems import Problem, explain, format_path, yaml_message

#: File names kustomize accepts for a kustomization, in its order of preference
#: (https://kubectl.docs.kubernetes.io/references/kustomize/glossary/#kustomization-root).
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
#: Kustomization fields this check follows, or which only set names, labels, annotations,
#: namespaces, images or replica counts (they do not change whether an object is valid).
FOLLOWED_FIELDS = (
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "images",
    "replicas",
    "generatorOptions",
    "sortOptions",
    "buildMetadata",
)
_REMOTE = re.compile(r"^(https?://|ssh://|git@|git::|github\.com/|gitlab\.com/)")


@dataclass(frozen=True)
class Document:
    """One Kubernetes object read from a manifest file.

    Attributes:
        file: the file, as the operator named the folder joined with the path inside it.
        index: the document's position in the file (0-based, empty documents counted).
        obj: the parsed object.
    """

    file: str
    index: int
    obj: Any


def kubernetes_versions() -> tuple[str, ...]:
    """Return the Kubernetes versions to validate against: 1.32 (the chart's ``kubeVersion``
    floor, ``>=1.32``) and the newest kubernetes-validate knows, as ``major.minor``."""
    from kubernetes_validate.utils import latest_version, major_minor

    return tuple(dict.fromkeys(("1.32", major_minor(latest_version()))))


def collect(path: str) -> tuple[list[Document], list[Problem]]:
    """Read the objects of a kustomize tree, a folder of manifests or one manifest file.

    Args:
        path: as the operator gave it; file names in problems start with it.

    Returns:
        ``(documents, problems)``: the objects in the order kustomize would list them, and
        the problems found on the way (unreadable YAML, missing or remote resources, files
        outside a kustomization's folder, fields this check cannot render).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(path)
    walker = _Walker()
    if root.is_dir():
        kustomization = _kustomization_file(root)
        if kustomization is not None:
            walker.kustomization(root, path, kustomization)
        else:
            for child in sorted(root.iterdir()):
                if child.is_file() and child.suffix in (".yaml", ".yml", ".json"):
                    walker.manifest(child, os.path.join(path, child.name))
    else:
        walker.manifest(root, path)
    return walker.documents, walker.problems


def _kustomization_file(folder: Path) -> str | None:
    return next((n for n in KUSTOMIZATION_FILES if (folder / n).is_file()), None)


class _Walker:
    def __init__(self):
        self.documents: list[Document] = []
        self.problems: list[Problem] = []
        self._seen: set[Path] = set()

    def kustomization(self, folder: Path, shown: str, name: str) -> None:
        real = folder.resolve()
        if real in self._seen:
            return
        self._seen.add(real)
        file = os.path.join(shown, name)
        try:
            data = yaml.safe_load((folder / name).read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            self.problems.append(Problem(file, "", yaml_message(e)))
            return
        if not isinstance(data, dict):
            self.problems.append(Problem(file, "", "must be a mapping (a Kustomization)"))
            return
        for key in data:
            if key not in FOLLOWED_FIELDS:
                self.problems.append(
                    Problem(
                        file,
                        format_path([str(key)]),
                        "cannot be rendered offline by this check; the objects in resources "
                        "are checked as written. Render and check the result: kubectl "
                        f"kustomize {shown} > all.yaml && llmspawner deploy check --manifests "
                        "all.yaml",
                    )
                )
        entries = data.get("resources") or []
        if not isinstance(entries, list):
            self.problems.append(Problem(file, "resources", "must be a list of paths"))
            return
        for i, entry in enumerate(entries):
            self._resource(folder, shown, file, i, entry)

    def _resource(self, folder: Path, shown: str, file: str, i: int, entry: Any) -> None:
        where = f"resources[{i}]"
        if not isinstance(entry, str) or not entry:
            self.problems.append(Problem(file, where, f"must be a path, not {entry!r}"))
            return
        if _REMOTE.match(entry):
            self.problems.append(
                Problem(file, where, f"{entry} is remote; this check reads local files only")
            )
            return
        target = folder / entry
        target_shown = os.path.normpath(os.path.join(shown, entry))
        if target.is_dir():
            name = _kustomization_file(target)
            if name is None:
                self.problems.append(
                    Problem(
                        file,
                        where,
                        f"{entry} is a folder without {', '.join(KUSTOMIZATION_FILES)}",
                    )
                )
                return
            self.kustomization(target, target_shown, name)
        elif target.is_file():
            # Kustomize loads files only from its own folder or below ("security; file ...
            # is not in or below ..."): https://github.com/kubernetes-sigs/kustomize/pull/700.
            if not target.resolve().is_relative_to(folder.resolve()):
                self.problems.append(
                    Problem(
                        file,
                        where,
                        f"{entry} is outside this kustomization's folder; kustomize refuses "
                        "to load it (move it below the folder, or list a folder with its own "
                        "kustomization.yaml)",
                    )
                )
                return
            self.manifest(target, target_shown)
        else:
            self.problems.append(Problem(file, where, f"{entry} does not exist"))

    def manifest(self, path: Path, shown: str) -> None:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as e:
            self.problems.append(Problem(shown, "", yaml_message(e)))
            return
        for index, obj in enumerate(docs):
            if obj is not None:
                self.documents.append(Document(shown, index, obj))


def object_name(doc: Document) -> str:
    """Name an object in a problem: ``Kind/name``, or the document's position without one."""
    obj = doc.obj if isinstance(doc.obj, dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName")
    return f"{obj.get('kind') or '?'}/{name or f'(document {doc.index + 1})'}"


def object_problems(doc: Document, versions: Sequence[str]) -> list[Problem]:
    """Validate one object against the Kubernetes schemas of ``versions``, strictly.

    Args:
        doc: the object and where it was read.
        versions: Kubernetes ``major.minor`` versions (:func:`kubernetes_versions`), oldest
            first.

    Returns:
        Problems whose path is ``Kind/name: path.in.object``. A problem at one path is
        reported once, in the oldest version's words; the message ends with the versions it
        applies to unless it applies to all. An ``apiVersion`` no Kubernetes release known to
        kubernetes-validate has (a custom resource, e.g. Kueue's) gives a warning, since it
        cannot be checked; an unknown kind of a Kubernetes API, or an API missing in one of
        ``versions``, is a problem. kubernetes-validate stops at an object's first error, so
        an object gives at most one problem per version.
    """
    import kubernetes_validate

    obj, who = doc.obj, object_name(doc)
    if not isinstance(obj, dict):
        return [Problem(doc.file, who, f"must be a mapping, not {type(obj).__name__}")]
    missing = [k for k in ("apiVersion", "kind") if not isinstance(obj.get(k), str) or not obj[k]]
    if missing:
        return [Problem(doc.file, f"{who}: {k}", "is required") for k in missing]
    api, kind = obj["apiVersion"], obj["kind"]
    if not any(_known_api(api, v) for v in _all_versions()):
        return [
            Problem(
                doc.file,
                who,
                f"not validated: {api} is not a Kubernetes API (a custom resource?); "
                "kubernetes-validate has schemas for built-in kinds only",
                warning=True,
            )
        ]
    found: dict[str, list[tuple[str, str]]] = {}  # path -> [(version, message)]
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            for parts, message in explain(e):
                found.setdefault(format_path(parts), []).append((version, message))
        except kubernetes_validate.SchemaNotFoundError:
            if _known_api(api, version):
                message = f"Kubernetes has no kind {kind} in {api}"
                found.setdefault("kind", []).append((version, message))
            else:
                found.setdefault("apiVersion", []).append((version, f"{api} is not served"))
    problems = []
    for path, hits in found.items():
        message = hits[0][1]
        if len(hits) < len(versions) or path == "apiVersion":
            message += f" (Kubernetes {', '.join(v for v, _ in hits)})"
        problems.append(Problem(doc.file, f"{who}: {path}" if path else who, message))
    return problems


def _all_versions() -> list[str]:
    """Every Kubernetes ``major.minor`` kubernetes-validate has schemas of."""
    from kubernetes_validate.utils import all_versions, major_minor

    return [major_minor(v) for v in all_versions()]


def _known_api(api_version: str, version: str) -> bool:
    """Whether kubernetes-validate has any kind of ``api_version`` for this version."""
    # Its schema files are named <kind>-<group>-<version>.json, the group cut at its first
    # dot (kubernetes_validate.utils.validate does the same to find a file).
    slug = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version).lower()
    return slug in _schema_apis(version)


@functools.cache
def _schema_apis(version: str) -> frozenset[str]:
    """The ``<group>-<version>`` names of the APIs kubernetes-validate knows in ``version``."""
    from kubernetes_validate.utils import all_versions
    from packaging.version import Version

    # Like kubernetes_validate.validate: the newest schemas not newer than ``version``.
    name = [v for v in all_versions() if Version(v) <= Version(f"{version}.999")][-1]
    folder = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    apis = set()
    for entry in folder.joinpath(f"v{name}-local-strict").iterdir():
        kind, _, api = entry.name.removesuffix(".json").partition("-")
        if api:
            apis.add(api)
    return frozenset(apis)

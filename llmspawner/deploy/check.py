"""Run every offline check of a deployment: values, GPU profiles and manifests.

Each ``check_*`` function reads its files and returns a :class:`Part` (what was checked and
the problems found); the rules themselves live in :mod:`.values`, :mod:`.llm_values`,
:mod:`llmspawner.profiles` and :mod:`.manifests`. Nothing here prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import profiles as profiles_mod
from . import llm_values, manifests, values
from .problems import Problem, yaml_message


@dataclass
class Part:
    """The result of one check.

    Attributes:
        what: what was checked, for the summary line (``4 profiles in profiles``).
        problems: what is wrong, in file order.
    """

    what: str
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Report:
    """All checks of one run of ``llmspawner deploy check``."""

    parts: list[Part]

    @property
    def problems(self) -> list[Problem]:
        """Every problem and warning, in the order of the parts."""
        return [p for part in self.parts for p in part.problems]

    @property
    def ok(self) -> bool:
        """``True`` when there are no problems (warnings allowed)."""
        return not any(not p.warning for p in self.problems)

    def summary(self) -> str:
        """One line: what was checked and how many problems and warnings were found."""
        errors = sum(not p.warning for p in self.problems)
        warnings = len(self.problems) - errors
        counts = f"{errors} problem{'s' * (errors != 1)}" if errors else "no problems"
        if warnings:
            counts += f", {warnings} warning{'s' * (warnings != 1)}"
        return f"deploy check: {counts} ({'; '.join(part.what for part in self.parts)})"


def read_values(path: str) -> tuple[dict | None, list[Problem]]:
    """Read a values file. Returns ``(values, problems)``; ``values`` is None when unreadable.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        return None, [Problem(path, "", yaml_message(e))]
    if data is None:
        return {}, []  # Helm reads an empty values file as no values
    if not isinstance(data, dict):
        return None, [Problem(path, "", f"must be a mapping, not {type(data).__name__}")]
    return data, []


def check_values(path: str) -> tuple[Part, dict | None]:
    """Check a z2jh values file: the chart's schema (and the settings chart
    :data:`~.values.CHART_VERSION` lacks), then what llmspawner needs.

    A llmspawner check's problem at a path where the chart's schema already found one is left
    out (one line per mistake).

    Returns:
        ``(part, merged)``: the result, and the values merged over the chart's defaults
        (None when the file could not be read).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    part = Part(f"{path} against the z2jh chart schema")
    user, part.problems = read_values(path)
    if user is None:
        return part, None
    merged = values.helm_merge(values.chart_defaults(), user)
    schema = values.schema_problems(merged, values.chart_schema(), file=path)
    schema += values.chart_version_problems(user, file=path)
    paths = {p.path for p in schema}
    ours = [p for p in llm_values.llmspawner_problems(merged, file=path) if p.path not in paths]
    part.problems = schema + ours
    return part, merged


def check_profiles(folder: str, cluster: profiles_mod.ClusterGPUConfig) -> Part:
    """Check every profile file of ``folder`` as the hub does when it starts.

    Unlike :func:`llmspawner.profiles.load_profiles`, which stops at the first problem, each
    file is parsed on its own (:func:`~llmspawner.profiles.parse_profile`), so every broken
    file is reported; the rules across files
    (:func:`~llmspawner.profiles.check_profile_set`) are checked when all files parse.

    Raises:
        FileNotFoundError: when ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(folder)
    part = Part("")
    parsed = []
    # The files load_profiles reads, in its order.
    files = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    for path in files:
        shown = os.path.join(folder, path.name)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            part.problems.append(Problem(shown, "", yaml_message(e)))
            continue
        try:
            parsed.append(profiles_mod.parse_profile(data, file=path.name, cluster=cluster))
        except profiles_mod.ProfileError as e:
            part.problems.append(_profile_problem(e, folder))
    if not part.problems:
        try:
            profiles_mod.check_profile_set(parsed, where=folder)
        except profiles_mod.ProfileError as e:
            part.problems.append(_profile_problem(e, folder))
    part.what = f"{len(files)} profile{'s' * (len(files) != 1)} in {folder}"
    return part


def _profile_problem(e: profiles_mod.ProfileError, folder: str) -> Problem:
    """A :class:`~llmspawner.profiles.ProfileError` as a problem; its file joined to ``folder``."""
    where = f"{e.file}: {e.field}" if e.field else e.file
    message = str(e)[len(where) + 2 :]
    file = folder if e.file == folder else os.path.join(folder, e.file)
    return Problem(file, e.field, message)


def check_manifests(path: str) -> Part:
    """Check the Kubernetes objects of a kustomize tree, a folder or a file (see
    :mod:`.manifests`) against Kubernetes 1.32 and the newest version kubernetes-validate
    knows.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    versions = manifests.kubernetes_versions()
    documents, problems = manifests.collect(path)
    for doc in documents:
        problems.extend(manifests.object_problems(doc, versions))
    files = len({d.file for d in documents})
    objects = f"{len(documents)} object{'s' * (len(documents) != 1)}"
    what = f"{objects} in {files} file{'s' * (files != 1)} of {path}"
    return Part(f"{what} against Kubernetes {' and '.join(versions)}", problems)


def check_all(values_path: str, manifests_path: str, profiles_path: str) -> Report:
    """Run every check: values, then profiles (with the values' GPU settings), then manifests.

    Raises:
        FileNotFoundError: naming the first path that does not exist.
    """
    for path in (values_path, profiles_path, manifests_path):
        if not Path(path).exists():
            raise FileNotFoundError(path)
    values_part, merged = check_values(values_path)
    cluster, cluster_problems = llm_values.cluster_gpu_config(merged or {}, file=values_path)
    values_part.problems.extend(p for p in cluster_problems if p not in values_part.problems)
    return Report(
        [values_part, check_profiles(profiles_path, cluster), check_manifests(manifests_path)]
    )

"""``helm-values.yaml`` against the zero-to-jupyterhub chart: Helm's merge, then its schema.

The chart's schema and defaults are shipped in this package (``llmspawner/deploy/z2jh/``, see
the README there for the source commit), so the check needs no network and no ``helm``.
Helm validates the *merged* values (user values over the chart's ``values.yaml``) against the
chart's ``values.schema.json`` before rendering
(https://helm.sh/docs/topics/charts/#schema-files); :func:`helm_merge` and
:func:`schema_problems` do the same. Everything here is pure except :func:`chart_defaults`
and :func:`chart_schema`, which read the shipped files.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

from .problems import Problem, explain, format_path

#: The chart version the kit installs: ``helm ... --version`` in docs/deploy.md, the header of
#: ``helm-values.yaml`` and the hub image's base tag ``quay.io/jupyterhub/k8s-hub:<version>``
#: (tests/unit/test_deploy_manifests.py keeps them equal).
CHART_VERSION = "4.4.0"

#: Value paths that the shipped chart data accepts but chart :data:`CHART_VERSION` does not.
#: The data in ``z2jh/`` is the chart's ``jupyterhub/`` folder at a development commit after
#: 4.4.0 (``z2jh/README.md``); its schema differs from 4.4.0's only by these additions (``git
#: diff 4.4.0 48ea50e3 -- jupyterhub/values.schema.yaml`` in
#: https://github.com/jupyterhub/zero-to-jupyterhub-k8s), each under an object that 4.4.0's
#: schema closes (``additionalProperties: false``), so ``helm install --version 4.4.0``
#: refuses them.
NEWER_THAN_CHART = (
    ("proxy", "chp", "command"),
    ("proxy", "traefik", "command"),
    ("proxy", "traefik", "args"),
    ("httpRoute", "parentRefs"),
)


def chart_version_problems(user: dict, *, file: str) -> list[Problem]:
    """Values the user set that chart :data:`CHART_VERSION` does not know.

    Args:
        user: the user's values file as written (not merged: the shipped defaults already
            hold some of these keys, e.g. ``proxy.chp.command``).
        file: the values file's name, for the problems.

    Returns:
        One :class:`Problem` per path of :data:`NEWER_THAN_CHART` present in ``user``.
    """
    problems = []
    for path in NEWER_THAN_CHART:
        node: Any = user
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            problems.append(
                Problem(
                    file,
                    format_path(path),
                    f"is not a setting of chart {CHART_VERSION} (newer charts only); "
                    f"helm install --version {CHART_VERSION} refuses it",
                )
            )
    return problems


def _chart_file(name: str) -> Any:
    text = resources.files(__package__).joinpath("z2jh").joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@functools.cache
def _chart_defaults() -> dict:
    return _chart_file("values.yaml")


def chart_defaults() -> dict:
    """Return the z2jh chart's default values (``z2jh/values.yaml``), a fresh copy each call."""
    return copy.deepcopy(_chart_defaults())


@functools.cache
def chart_schema() -> dict:
    """Return the z2jh chart's values schema (``z2jh/values.schema.yaml``, JSON Schema draft 7).

    The same object is returned on every call; do not change it.
    """
    return _chart_file("values.schema.yaml")


def helm_merge(defaults: dict, overrides: dict) -> dict:
    """Merge user values onto a chart's defaults as Helm does; neither input is changed.

    Maps merge key by key; any other value (lists included) replaces the default; a ``null``
    user value deletes a default key
    (https://helm.sh/docs/chart_template_guide/values_files/#deleting-a-default-key).

    Args:
        defaults: the chart's ``values.yaml``.
        overrides: the user's values file.

    Returns:
        The merged values.
    """
    out = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None and key in out:
            del out[key]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def schema_problems(values: dict, schema: dict, *, file: str) -> list[Problem]:
    """Validate merged values against a chart's JSON schema (draft 7).

    Args:
        values: the merged values (:func:`helm_merge`).
        schema: the chart's schema (:func:`chart_schema`).
        file: the values file's name, for the problems.

    Returns:
        One :class:`Problem` per violation, sorted by path. The message lists the allowed
        values of an ``enum``, the allowed keys of an object that allows no others, and the
        expected type; an unknown key is reported at its own path.
    """
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    problems = {
        Problem(file, format_path(parts), message)
        for error in validator.iter_errors(values)
        for parts, message in explain(error)
    }
    return sorted(problems, key=lambda p: (p.path, p.message))

"""A problem found by ``llmspawner deploy check``, and how a path inside a file is written.

Pure: no I/O. Every check returns a list of :class:`Problem`; the command prints each as one
line ``FILE: PATH: message`` (``FILE: message`` when the problem is the whole file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Problem:
    """One problem in one file.

    Attributes:
        file: the file as the operator named it (e.g. ``helm-values.yaml``,
            ``deploy/manifests/hub.yaml``).
        path: where in the file, e.g. ``hub.config.LLMPlatform.profiles_dir`` or
            ``Deployment/hub: spec.template.spec.containers[0].image``; empty for the whole
            file.
        message: what is wrong and what is allowed.
        warning: ``True`` for something that could not be checked (printed, but the check
            still passes).
    """

    file: str
    path: str
    message: str
    warning: bool = False

    def line(self) -> str:
        """Return the printed line: ``FILE: PATH: message`` (``warning:`` before a warning)."""
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {'warning: ' if self.warning else ''}{self.message}"


def format_path(parts: Iterable[str | int]) -> str:
    """Write a path inside a YAML document as ``a.b[0].c``.

    Args:
        parts: mapping keys (``str``) and list indexes (``int``), outermost first, as
            jsonschema's ``ValidationError.absolute_path`` gives them.

    Returns:
        The dotted path; a key that is not a plain word (``nvidia.com/gpu``) is written
        ``["nvidia.com/gpu"]``. Empty for the document itself.
    """
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def scalar(value: object) -> str:
    """Write an allowed value as it reads in YAML: ``none``, ``null``, ``true``, ``""``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def explain(error) -> list[tuple[list[str | int], str]]:
    """Turn one jsonschema ``ValidationError`` into ``(path parts, message)`` pairs.

    The message says what is allowed: an ``enum``'s values (``must be one of dynamic,
    static, none; got 'bogus'``), the expected type (``must be an array, not 'x'``), and for
    an object that allows no other keys each unknown key at its own path with the allowed
    keys. A missing required key is reported at its own path (``is required``). Other
    errors keep jsonschema's message.

    Args:
        error: a ``jsonschema.ValidationError`` (or a subclass, e.g. kubernetes-validate's).

    Returns:
        One or more pairs; the parts are as :func:`format_path` takes them.
    """
    path = list(error.absolute_path)
    kind, expected, instance = error.validator, error.validator_value, error.instance
    if kind == "enum":
        allowed = ", ".join(scalar(v) for v in expected)
        return [(path, f"must be one of {allowed}; got {instance!r}")]
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(
            "null" if t == "null" else f"{'an' if t[0] in 'aeio' else 'a'} {t}" for t in types
        )
        return [(path, f"must be {wanted}, not {instance!r}")]
    if kind == "required" and isinstance(instance, dict):
        return [([*path, k], "is required") for k in expected if k not in instance]
    if kind == "additionalProperties" and expected is False and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extra = [k for k in instance if k not in known and not _matches(patterns, k)]
        allowed = ", ".join(known) or "none"
        if patterns:
            allowed += "; or keys matching " + ", ".join(patterns)
        return [([*path, k], f"unknown key; allowed keys: {allowed}") for k in extra]
    return [(path, error.message)]


def _matches(patterns: list[str], key: object) -> bool:
    return any(re.search(p, str(key)) for p in patterns)


def yaml_message(e: Exception) -> str:
    """The message of a problem for a file PyYAML could not parse, with line and column."""
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"is not valid YAML: {getattr(e, 'problem', None) or e}{where}"

"""helm-values.yaml against the zero-to-jupyterhub chart's schema (first draft checks)."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
Z2JH = ROOT.parent / "shared" / "z2jh"


def deep_merge(base: dict, override: dict) -> dict:
    """Merge as Helm merges user values onto the chart's defaults (maps merge, rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.mark.skipif(not Z2JH.is_dir(), reason=f"z2jh chart data not found at {Z2JH}")
def test_values_validate_against_chart_schema():
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    values = deep_merge(
        yaml.safe_load((Z2JH / "values.yaml").read_text()),
        yaml.safe_load((ROOT / "helm-values.yaml").read_text()),
    )
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]
    assert errors == []


def test_values_use_llmspawner():
    values = yaml.safe_load((ROOT / "helm-values.yaml").read_text())
    assert values["hub"]["config"]["JupyterHub"]["spawner_class"] == "llm"
    assert values["singleuser"]["storage"]["type"] == "none"
    assert "configure(c)" in values["hub"]["extraConfig"]["llmspawner"]

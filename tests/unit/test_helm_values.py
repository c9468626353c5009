"""helm-values.yaml against the zero-to-jupyterhub chart's own files (../shared/z2jh)."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from llmspawner.deploy.values import helm_merge

ROOT = Path(__file__).resolve().parents[2]
Z2JH = ROOT.parent / "shared" / "z2jh"


@pytest.mark.skipif(not Z2JH.is_dir(), reason=f"z2jh chart data not found at {Z2JH}")
def test_values_validate_against_chart_schema():
    schema = yaml.safe_load((Z2JH / "values.schema.yaml").read_text())
    values = helm_merge(
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

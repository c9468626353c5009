"""The planning worker starts quickly: what it imports for a plan (``llmspawner.queue.planning``,
unpickled from each pass's call) does not pull in kubespawner, which took the worker 8 s of
CPU (a minute of wall-clock time) to start on a loaded 2-core machine, while passes waited."""

import json
import subprocess
import sys


def test_planning_imports_no_kubespawner():
    code = (
        "import sys, json; import llmspawner.queue.planning; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('kubespawner', 'kubernetes_asyncio', 'jupyterhub', 'tornado'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


HEAVY = ("kubespawner", "kubernetes_asyncio", "jupyterhub", "tornado")

#: What ``llmspawner queue submit <file>`` runs before it sends (LlamaBoard's saved arguments
#: turned into a config, which needs the user's slug and the models folder), then what the
#: queue's config-check worker runs for a submit (its start-up import, then one check).
_SUBMIT_AND_CHECK = """
import json, sys
from llmspawner.queue import cli, limits
args = {"top.model_name": "Qwen2.5-0.5B-Instruct", "top.finetuning_type": "lora",
        "train.training_stage": "Supervised Fine-Tuning", "train.dataset": ["alpaca_en_demo"],
        "train.dataset_dir": "data", "train.output_dir": "out"}
import yaml
text = cli.from_llamaboard(yaml.safe_dump(args), model_path="/storage/models/m",
                           models_dir="/storage/models", stamp="2026-12-02-00-00-00")
body = cli.submit_body(text, profile="small", priority="normal")
limits._warm()
from llmspawner.queue import lf_config
checked = lf_config.check_submit_body(body, username="Alice Smith", stamp="2026-12-02-00-00-00")
assert checked.config_ok, checked
assert text.startswith("### model") or "model_name_or_path" in text, text  # converted
assert "llmspawner._kubespawner_slugs" in sys.modules  # the slug rule ran, kubespawner's
print(json.dumps(sorted({m for m in sys.modules if m.split('.')[0] in %r})))
"""


def test_cli_submit_and_config_worker_import_no_kubespawner():
    """``llmspawner queue submit`` ran in the user's pod with ~6 s of CPU for importing
    kubespawner (through the slug functions of ``llmspawner.storage``), and the config-check
    worker paid the same at its start; now both load only kubespawner's ``slugs.py``."""
    code = _SUBMIT_AND_CHECK % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_storage_slugs_are_kubespawners():
    """The slug rule is kubespawner's own code: equal results to ``kubespawner.slugs`` over
    many names (valid labels, upper case, Unicode, long, empty parts, ``--``), whether
    ``llmspawner.storage`` was imported before or after kubespawner."""
    code = """
import json, random, sys
from llmspawner import storage
assert 'kubespawner' not in sys.modules
import kubespawner.slugs as ks
rng = random.Random(16)
alphabet = 'abcXYZ019-_.@ é中-' + chr(0x1F600)
names = ['alice', 'Alice', 'a--b', 'a' * 63, 'a' * 64, '-a', 'a-', '1abc', 'x.y@z', 'ü', '---']
names += [''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(3000)]
bad = [n for n in names if storage.user_slug(n) != ks.safe_slug(n)]
assert storage.is_valid_object_name is not ks.is_valid_object_name  # loaded on its own here
# imported after kubespawner (the hub): kubespawner's module itself
del sys.modules['llmspawner.storage'], sys.modules['llmspawner._kubespawner_slugs']
import importlib
storage = importlib.import_module('llmspawner.storage')
print(json.dumps([bad, storage.safe_slug is ks.safe_slug]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[], True]

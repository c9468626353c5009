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

"""JupyterHub configuration for llmspawner.

Standalone: everything comes from environment variables, listed in ``llmspawner/hubconfig.py``.
Under zero-to-jupyterhub, the chart's own configuration has run before; ``configure`` then
only fills in what the chart left unset. The dev stack (``llmspawner dev``) runs this file
after its own dev-cluster settings (``devtools/llmspawner_dev/jupyterhub_config.py``); this
file has no dev branch.
"""

from llmspawner.hubconfig import configure

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c)

"""JupyterHub configuration for llmspawner.

Standalone (``llmspawner dev`` uses it): everything comes from environment variables, listed
in ``llmspawner/hubconfig.py``. Under zero-to-jupyterhub, the chart's own configuration has
run before; ``configure`` then only fills in what the chart left unset.
"""

from llmspawner.hubconfig import configure

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c)

"""Config file of ``jupyterhub-idle-culler`` (``--config``): the per-profile idle timeout hook.

See :mod:`llmspawner.culling`.
"""

from llmspawner.culling import profile_arbiter
from llmspawner.lifeline import hold_to_parent

# The culler runs as a hub-managed service: no second copy next to a restarted hub.
hold_to_parent()

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file
c.IdleCuller.cull_arbiter_hook = profile_arbiter

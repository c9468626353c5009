"""Config file of ``jupyterhub-idle-culler`` (``--config``): the per-profile idle timeout hook.

See :mod:`llmspawner.culling`.
"""

from llmspawner.culling import profile_arbiter

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file
c.IdleCuller.cull_arbiter_hook = profile_arbiter

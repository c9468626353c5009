"""The whole platform on one machine, for development and end-to-end tests.

- :mod:`.processes`: child processes, free ports, readiness waits, no orphans.
- :mod:`.parts`: command lines and environments of the parts (pure builders).
- :mod:`.kube`: a small Kubernetes REST client (PVC, pods) from a kubeconfig.
- :mod:`.stack`: :class:`DevStack`, which starts and stops the parts.
- :mod:`.login`: :class:`HubSession`, a user logged in through OIDC without a browser.
- :mod:`.smoke`: ``llmspawner dev --smoke``.
- :mod:`.command`: the ``llmspawner dev`` command.

Nothing here is used by the hub or the user pods in production.
"""

"""``llmspawner deploy check``: validate a deployment's files offline before ``helm install``.

- :mod:`.values` — ``helm-values.yaml`` merged over the z2jh chart's defaults, against its
  schema (both shipped in ``z2jh/``);
- :mod:`.llm_values` — what llmspawner itself needs from those values;
- :mod:`.manifests` — the kustomize tree's objects against Kubernetes' OpenAPI schemas;
- :mod:`.check` — runs all of them, with the GPU profiles; :mod:`.cli` — the command.
"""

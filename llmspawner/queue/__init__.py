"""The batch training queue: the ``llm-queue`` JupyterHub service.

Users hand in a LLaMA-Factory training config; it waits in a database until a GPU slice of
its profile is free, then runs as a Kubernetes Job whose results land in the user's own
folder and MLflow experiment.

Pure parts (no I/O): :mod:`.lf_config` (validate and prepare a training config),
:mod:`.admission` (who starts next), :mod:`.k8s_objects` (the Job and ConfigMap manifests).
Storage: :mod:`.models` and :mod:`.db` (SQLAlchemy, schema migrated with alembic).
I/O and the service: :mod:`.backend`, :mod:`.reconcile`, :mod:`.app`, :mod:`.service`,
:mod:`.cli`.
"""

"""The batch training queue: the ``llm-queue`` JupyterHub service.

Users hand in a LLaMA-Factory training config; it waits in a database until a GPU slice of
its profile is free, then runs as a Kubernetes Job whose results land in the user's own
folder and MLflow experiment.

Names: :mod:`.states` (job states, priorities, the service's name and scopes; stdlib only).
Pure parts (no I/O): :mod:`.lf_config` with :mod:`.lf_arguments` (validate and prepare a
training config, against a table generated from llamafactory), :mod:`.admission` (who starts
next), :mod:`.status` (a Job's state from its Job and pods), :mod:`.k8s_objects` (the Job and
ConfigMap manifests). Storage: :mod:`.models` and :mod:`.db` (SQLAlchemy, alembic).
The service: :mod:`.operations` (submit, cancel, show, list, logs, limits, views),
:mod:`.app` (the HTTP handlers and pages, calling the operations), :mod:`.control` (the
control loop: states, admission, Jobs, MLflow runs), :mod:`.context` (what those two share),
:mod:`.backend` (Kubernetes I/O), :mod:`.service` (the application), :mod:`.hubservice`
(the hub's side). The in-pod client: :mod:`.cli` (stdlib, httpx and :mod:`.states` only).
"""

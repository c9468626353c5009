"""The batch queue's names, defined once: job states, priorities, the service name and scopes.

Standard library only: the in-pod client (``llmspawner queue ...``) imports this module, and so
do the service, its database models, its pages and the hub's configuration.

Job states: ``queued → admitted → running → succeeded | failed | cancelled``.
"""

from __future__ import annotations

#: Every state of a job, in the order of its life.
STATES = ("queued", "admitted", "running", "succeeded", "failed", "cancelled")
#: Each state by name, for code that sets or tests one.
QUEUED, ADMITTED, RUNNING, SUCCEEDED, FAILED, CANCELLED = STATES
#: States of a job that holds (or is about to hold) a GPU slice: it has a Kubernetes Job.
ACTIVE_STATES = ("admitted", "running")
#: States a job never leaves.
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: States a job can still be cancelled in (every state but the final ones).
CANCELLABLE_STATES = tuple(s for s in STATES if s not in FINAL_STATES)

#: Priorities, highest first.
PRIORITIES = ("high", "normal", "low")
#: The default priority of a submitted job.
DEFAULT_PRIORITY = "normal"
#: The PriorityClass of each priority (``deploy/manifests`` creates them).
PRIORITY_CLASSES = {p: f"llm-{p}" for p in PRIORITIES}

#: The hub service's name: its URL is ``/services/llm-queue/``; also the ``managed-by`` label
#: value of every Kubernetes object the queue creates.
SERVICE_NAME = "llm-queue"
#: The scope that lets a token use the service
#: (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html#access-scopes).
ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
#: The custom scope that makes a token a queue admin
#: (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html#custom-scopes).
ADMIN_SCOPE = f"custom:{SERVICE_NAME}:admin"

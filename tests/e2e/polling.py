"""Waiting for a condition in e2e tests: the one :func:`~devcluster.testing.wait_until`.

Kept so that ``from .polling import wait_until`` keeps working; new code imports it from
``devcluster.testing``.
"""

from devcluster.testing import WaitTimeout, wait_until

__all__ = ["WaitTimeout", "wait_until"]

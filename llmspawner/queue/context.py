"""What the queue's operations (:mod:`.operations`) and its control loop (:mod:`.control`) share.

:class:`QueueContext` holds the database's session factory, the Kubernetes backend, the
platform settings (:class:`llmspawner.settings.LLMPlatform`), the queue's own settings
(:class:`QueueSettings`), the MLflow tracker, the lock under which a job's state changes
after it was queued, and the waiting positions of the last admission pass.

Profiles are read through the platform's one cache (:meth:`QueueContext.profiles`) on every
request and every pass, so a profile file added, changed or removed is seen within seconds,
as by the spawner, and a broken edit keeps the last valid set (logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..profiles import Profile
from ..settings import LLMPlatform
from ..tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueSettings:
    """The queue's own settings (the ``LLMQueue`` traits that are not platform settings).

    Attributes:
        image: training image for the queue's Jobs (``LLMQueue.image``); ``""``: the
            platform's (``LLMPlatform.image``). A profile's own ``image`` wins over both.
        default_limit: running (admitted or running) jobs per user, unless set per user.
        kueue_queue: Kueue ``LocalQueue`` name; ``None``: the service admits.
        backoff_limit: Job retries (``spec.backoffLimit``).
        ttl_seconds_after_finished: seconds a finished Job (and its pods/logs) is kept.
        service_account: service account of the Jobs' pods, or ``None``.
        unschedulable_timeout: seconds an admitted job's pod may stay unschedulable before
            the job fails with ``Unschedulable``.
        interval: seconds between two passes when nothing triggers one earlier.
        plan_off_loop: read the queued jobs and decide admission in the planning worker
            process (:func:`llmspawner.queue.planning.plan_in_worker`) when another process
            can reach the database (not SQLite in memory), so that a pass over 10,000 jobs
            does not block the event loop; ``False``: on the loop (the benchmarks'
            baseline). The decision is the same.
        max_requeues: how many times a job interrupted by a disruption or the deletion of
            its pod or Job runs again before it fails (``LLMQueue.max_requeues``);
            preemptions by the queue are not counted.
        preemption: preempt running ``low``/``normal`` queue jobs for a waiting ``high`` one
            (:func:`llmspawner.queue.disruption.choose_preemptions`).
        max_preemptions: how many times one job may be preempted (``LLMQueue.max_preemptions``).
    """

    image: str = ""
    default_limit: int = 1
    kueue_queue: str | None = None
    backoff_limit: int = 0
    ttl_seconds_after_finished: int = 86400
    service_account: str | None = None
    unschedulable_timeout: float = 600.0
    interval: float = 5.0
    plan_off_loop: bool = True
    max_requeues: int = 3
    preemption: bool = True
    max_preemptions: int = 2


@dataclass
class Waiting:
    """Positions and reasons of the queued jobs from the last admission pass, by job id."""

    positions: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)


class QueueContext:
    """The state shared by :class:`~.operations.QueueOperations` and
    :class:`~.control.ControlLoop` of one service.

    Args:
        sessions: a SQLAlchemy ``sessionmaker`` (:func:`llmspawner.queue.db.connect`). A
            session is only ever used between two awaits, never across one.
        backend: the Kubernetes I/O (:class:`~llmspawner.queue.backend.KubeBackend` or a
            stand-in with the same methods).
        platform: the platform settings (profiles folder, MLflow, GPUs, storage, uid/gid).
        settings: :class:`QueueSettings`.
        tracker: the MLflow I/O (:class:`llmspawner.tracking.Tracker`); ``None``: none (no
            runs looked up, no run links). Default: one for ``platform.mlflow_tracking_uri``
            when it is set.
        clock: wall clock in seconds since the epoch (injectable).
    """

    def __init__(
        self,
        sessions,
        backend,
        platform: LLMPlatform,
        settings: QueueSettings | None = None,
        *,
        tracker: Tracker | None | str = "default",
        clock: Callable[[], float] = time.time,
    ):
        self.sessions = sessions
        self.backend = backend
        self.platform = platform
        self.settings = settings or QueueSettings()
        if tracker == "default":
            tracker = (
                Tracker(
                    platform.mlflow_tracking_uri,
                    ui_url=platform.mlflow_ui_url,
                    timeout=platform.mlflow_timeout,
                )
                if platform.mlflow_tracking_uri
                else None
            )
        self.tracker: Tracker | None = tracker
        self.clock = clock
        #: Held while a job's state changes after submission (cancel, the loop's pass).
        self.lock = asyncio.Lock()
        self.waiting = Waiting()
        self._wake = asyncio.Event()

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace of the Jobs."""
        return self.backend.namespace

    def profiles(self) -> dict[str, Profile]:
        """The platform's profiles now, by slug, in file order (through the one cache).

        Raises:
            llmspawner.profiles.ProfileError: no valid set was ever loaded (the service
                checks the folder at start, so only if it was emptied before that).
        """
        return {p.slug: p for p in self.platform.profiles(log)}

    def experiment(self, username: str) -> str | None:
        """The user's MLflow experiment name, or ``None`` when tracking is off."""
        if not self.platform.mlflow_tracking_uri:
            return None
        return self.platform.experiment_name(username)

    def wake(self) -> None:
        """Ask the control loop for a pass as soon as possible."""
        self._wake.set()

    def wake_pending(self) -> bool:
        """Whether a pass was asked for (:meth:`wake`) and :meth:`wait_for_wake` has not
        cleared it yet (asked during the last pass: a burst)."""
        return self._wake.is_set()

    async def wait_for_wake(self, timeout: float, *, gather: float = 0.05) -> None:
        """Return after :meth:`wake` or ``timeout`` seconds, whichever comes first, then
        ``gather`` seconds more (a burst of submits makes one pass); clears the request."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(gather)
        self._wake.clear()

"""The in-memory object store of the emulated API server, with watch streams.

Every write bumps one cluster-wide counter, stored as ``metadata.resourceVersion`` (a numeric
string, increasing), and appends an event to a bounded log, so that a watch can resume from a
``resourceVersion`` (older than the log: 410 Expired, as a real API server answers). Lists carry
the current counter as ``metadata.resourceVersion``.

Stored dicts are never mutated in place: every write stores a new dict, so events and
listeners may hold references safely (and must not mutate them).

Deletion follows https://kubernetes.io/docs/concepts/architecture/garbage-collection/ :
objects with finalizers, and pods bound to a node that have not finished, get a
``deletionTimestamp`` and stay until released (finalizers emptied, or the kubelet reports the
processes gone); dependents (``ownerReferences`` to a removed object's uid) are deleted with
``propagationPolicy`` Background, or orphaned with Orphan, the default for Jobs as in the API.
With Foreground the owner gets a ``deletionTimestamp`` and the ``foregroundDeletion``
finalizer, its dependents are deleted, and it stays visible until no dependent that has
``blockOwnerDeletion: true`` in its reference to the owner is left (gone, not merely
marked); then the finalizer is dropped and the owner goes, as the garbage collector's
``processDeletingDependentsItem`` does
(https://kubernetes.io/docs/concepts/architecture/garbage-collection/#foreground-deletion,
https://github.com/kubernetes/kubernetes/blob/v1.32.0/pkg/controller/garbagecollector/garbagecollector.go).
Dependents that have dependents themselves are deleted in the foreground too, the others in
the background (pods gracefully, so a Job or ReplicaSet deleted in the foreground stays
until its pods' processes are gone). A pod is never a foreground owner here (its own
deletion is the kubelet's).
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .resources import JOBS, NAMESPACES, PODS, RESOURCES, Resource
from .selectors import Selector

FOREGROUND = "foregroundDeletion"  # the finalizer of an owner deleted in the foreground
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as apimachinery's rand.String


def now_iso() -> str:
    """The current UTC time as Kubernetes writes timestamps (RFC 3339, seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    """A random suffix as Kubernetes appends to ``generateName`` (5 lower-case characters)."""
    return "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(length))


class ApiError(Exception):
    """A refusal that the API server renders as a Kubernetes ``Status`` object.

    ``code`` is the HTTP status; ``reason`` the Status reason (``NotFound``,
    ``AlreadyExists``, ``Conflict``, ``BadRequest``, ``Expired``, ``Forbidden``...).
    https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/
    """

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> dict:
        """The ``Status`` object for this error."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(res: Resource, name: str) -> ApiError:
    """404 NotFound worded as the API server words it: ``pods "x" not found``."""
    details = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    return ApiError(404, "NotFound", f'{res.plural} "{name}" not found', details)


#: upstream's ``errors.NewConflict`` with ``registry.OptimisticLockErrorMsg``.
STALE_MESSAGE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def conflict(res: Resource, name: str, why: str = STALE_MESSAGE) -> ApiError:
    """409 Conflict worded as the API server words it (apimachinery ``errors.NewConflict``):
    ``Operation cannot be fulfilled on deployments.apps "x": <why>`` (the resource
    group-qualified, as its ``GroupResource`` prints; core kinds unqualified)."""
    qualified = f"{res.plural}.{res.group}" if res.group else res.plural
    details = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": {why}', details
    )


@dataclass(frozen=True)
class Event:
    """One change: ``type`` ADDED/MODIFIED/DELETED, the new object and the previous one."""

    rv: int
    resource: Resource
    type: str
    obj: dict
    old: dict | None


Key = tuple[str, str, str]  # (resource key, namespace or "", name)
Listener = Callable[[Event], None]


class Watcher:
    """One watch stream: events of a resource that match a namespace and a selector.

    Iterate with ``await watcher.next(timeout)``; a ``None`` means the timeout passed.
    Label/field changes are reported as Kubernetes does: an object that stops matching
    arrives as DELETED, one that starts matching as ADDED.
    """

    def __init__(self, store: Store, res: Resource, namespace: str | None, selector: Selector):
        self._store = store
        self.resource = res
        self.namespace = namespace
        self.selector = selector
        self.queue: asyncio.Queue[dict] = asyncio.Queue()

    def _matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.selector.matches(obj)

    def offer(self, event: Event) -> None:
        """Queue ``event`` for this stream if it concerns it (called by the store)."""
        if event.resource.key != self.resource.key:
            return
        now, before = self._matches(event.obj), self._matches(event.old)
        if event.type == "MODIFIED":
            if now and not before:
                self.queue.put_nowait({"type": "ADDED", "object": event.obj})
            elif before and not now:
                self.queue.put_nowait({"type": "DELETED", "object": event.obj})
            elif now:
                self.queue.put_nowait({"type": "MODIFIED", "object": event.obj})
        elif now:
            self.queue.put_nowait({"type": event.type, "object": event.obj})

    async def next(self, timeout: float | None) -> dict | None:
        """The next event dict ``{"type", "object"}``, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        """Stop receiving events."""
        self._store._watchers.discard(self)


class Store:
    """All objects of the emulated cluster, by resource, namespace and name.

    ``log_size`` bounds the event log kept for watches resumed from a resourceVersion.
    ``admit`` hooks run on create, in order: ``hook(store, resource, obj)`` may change the
    new object in place (defaulting) or raise `ApiError` (admission refusal).
    ``admit_update`` hooks run on replace and patch: ``hook(store, resource, old, new,
    subresource)`` may change ``new`` in place or raise `ApiError`. Controllers' `mutate`
    runs no hook (it writes what a controller owns, as the real controllers' status writes).

    Every write takes ``dry_run``: everything is checked and the would-be object returned,
    nothing is stored nor sent to watches (``?dryRun=All``).
    """

    def __init__(self, log_size: int = 10000):
        self._objects: dict[Key, dict] = {}
        self._by_res: dict[str, dict[Key, dict]] = {}  # the same objects by resource key
        self._rv = 1
        self._log: collections.deque[Event] = collections.deque(maxlen=log_size)
        self._log_floor = 0  # events with rv <= floor are no longer in the log
        self._watchers: set[Watcher] = set()
        self._listeners: list[Listener] = []
        self._pending_policy: dict[Key, str] = {}
        self.admit: list[Callable[[Store, Resource, dict], None]] = []
        self.admit_update: list[Callable[[Store, Resource, dict, dict, str], None]] = []

    # -- reading ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current cluster-wide resourceVersion, as a string."""
        return str(self._rv)

    @staticmethod
    def _key(res: Resource, namespace: str | None, name: str) -> Key:
        return (res.key, (namespace or "") if res.namespaced else "", name)

    def get(self, res: Resource, namespace: str | None, name: str) -> dict:
        """A deep copy of one object; raises `ApiError` 404 if absent."""
        obj = self._objects.get(self._key(res, namespace, name))
        if obj is None:
            raise not_found(res, name)
        return copy.deepcopy(obj)

    def peek(self, res: Resource, namespace: str | None, name: str) -> dict | None:
        """The stored object itself (do not mutate), or None."""
        return self._objects.get(self._key(res, namespace, name))

    def iter(self, res: Resource, namespace: str | None = None) -> Iterator[dict]:
        """The stored objects of a resource (do not mutate), optionally of one namespace."""
        for (_, ns, _), obj in list(self._by_res.get(res.key, {}).items()):
            if not namespace or ns == namespace:
                yield obj

    def _put(self, key: Key, obj: dict) -> None:
        self._objects[key] = obj
        self._by_res.setdefault(key[0], {})[key] = obj

    def list(
        self, res: Resource, namespace: str | None = None, selector: Selector | None = None
    ) -> tuple[list[dict], str]:
        """Deep copies of matching objects, sorted by namespace/name, and the list's rv."""
        selector = selector or Selector()
        items = [copy.deepcopy(o) for o in self.iter(res, namespace) if selector.matches(o)]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, self.resource_version

    # -- watching --------------------------------------------------------------------------

    def watch(
        self,
        res: Resource,
        namespace: str | None,
        selector: Selector,
        resource_version: str | None,
    ) -> Watcher:
        """Open a watch stream.

        With no ``resource_version`` (or ``"0"``), the stream starts with an ADDED event for
        each matching object; with a number, it replays the logged changes after it. Raises
        `ApiError` 410 Expired if that version is older than the log.
        """
        watcher = Watcher(self, res, namespace, selector)
        if resource_version in (None, "", "0"):
            for obj in self.list(res, namespace, selector)[0]:
                watcher.queue.put_nowait({"type": "ADDED", "object": obj})
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise ApiError(
                    400, "BadRequest", f"invalid resourceVersion: {resource_version!r}"
                ) from None
            if since < self._log_floor:
                raise ApiError(
                    410, "Expired", f"too old resource version: {since} ({self._log_floor})"
                )
            for event in self._log:
                if event.rv > since:
                    watcher.offer(event)
        self._watchers.add(watcher)
        return watcher

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` synchronously after every change (for controllers)."""
        self._listeners.append(listener)

    def _emit(self, res: Resource, type_: str, obj: dict, old: dict | None) -> None:
        event = Event(self._rv, res, type_, obj, old)
        if len(self._log) == self._log.maxlen:
            self._log_floor = self._log[0].rv
        self._log.append(event)
        for watcher in list(self._watchers):
            watcher.offer(event)
        for listener in list(self._listeners):
            listener(event)

    def _bump(self, obj: dict) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)

    # -- writing ---------------------------------------------------------------------------

    def create(
        self, res: Resource, obj: dict, namespace: str | None = None, dry_run: bool = False
    ) -> dict:
        """Store a new object and return a copy of it as stored.

        Fills ``apiVersion``/``kind``, ``metadata.namespace`` (from ``namespace``, else the
        object's, else ``default``), ``name`` from ``generateName``, ``uid``,
        ``creationTimestamp`` and ``resourceVersion``. Raises `ApiError`: 409 AlreadyExists,
        404 if the namespace does not exist, 400 if the body's namespace differs from the
        URL's or there is no name, and whatever an admission hook raises.
        """
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            meta["namespace"] = namespace or body_ns or "default"
            if self.peek(NAMESPACES, None, meta["namespace"]) is None:
                raise not_found(NAMESPACES, meta["namespace"])
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    400, "BadRequest", "metadata.name or metadata.generateName is required"
                )
            meta["name"] = meta["generateName"] + random_suffix()
        key = self._key(res, meta.get("namespace"), meta["name"])
        if key in self._objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{res.plural} "{meta["name"]}" already exists',
                {"name": meta["name"], "kind": res.plural},
            )
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta.pop("deletionTimestamp", None)
        for hook in self.admit:
            hook(self, res, obj)
        if dry_run:
            return copy.deepcopy(obj)
        self._bump(obj)
        self._put(key, obj)
        self._emit(res, "ADDED", obj, None)
        return copy.deepcopy(obj)

    def replace(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        obj: dict,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict:
        """Replace an object (PUT), or only its status with ``subresource="status"``.

        For resources with a status subresource, a PUT of the main resource keeps the stored
        status, as the API server does. A ``metadata.resourceVersion`` in the body that is not
        the stored one raises `ApiError` 409 Conflict; an absent object 404.
        """
        key = self._key(res, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise not_found(res, name)
        want_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise conflict(res, name)
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(obj.get("status", {}))
        else:
            new = copy.deepcopy(obj)
            new["apiVersion"], new["kind"] = res.api_version, res.kind
            meta = new.setdefault("metadata", {})
            for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
            if "status" in res.subresources:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        return self._admitted_update(res, key, old, new, subresource, dry_run)

    def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        apply: Callable[[dict], dict],
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict:
        """Patch an object (PATCH): ``apply(copy)`` returns the patched object.

        With ``subresource="status"`` only the patched status is kept; without, the status of
        a resource with a status subresource is kept as stored. Identity fields (uid, name,
        namespace, creationTimestamp) cannot change. Raises `ApiError` 404 if absent.
        """
        key = self._key(res, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise not_found(res, name)
        patched = apply(copy.deepcopy(old))
        new = copy.deepcopy(old)
        if subresource == "status":
            new["status"] = patched.get("status", {})
        else:
            new = patched
            for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
                if field in old["metadata"]:
                    new.setdefault("metadata", {})[field] = old["metadata"][field]
            if "status" in res.subresources:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        return self._admitted_update(res, key, old, new, subresource, dry_run)

    def _admitted_update(
        self, res: Resource, key: Key, old: dict, new: dict, subresource: str, dry_run: bool
    ) -> dict:
        for hook in self.admit_update:
            hook(self, res, old, new, subresource)
        if dry_run:
            return copy.deepcopy(new)
        return self._store_update(res, key, old, new)

    def mutate(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        change: Callable[[dict], None],
    ) -> dict | None:
        """Apply ``change(obj)`` to a deep copy and store it (for controllers).

        Returns the stored copy, or None if the object is gone (no error: controllers race
        with deletions). No event is sent when ``change`` leaves the object equal.
        """
        key = self._key(res, namespace, name)
        old = self._objects.get(key)
        if old is None:
            return None
        new = copy.deepcopy(old)
        change(new)
        if new == old:
            return old
        return self._store_update(res, key, old, new)

    def _store_update(self, res: Resource, key: Key, old: dict, new: dict) -> dict:
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and res != PODS:
            self._bump(new)
            self._put(key, new)
            self._remove_key(res, key)
            return copy.deepcopy(new)
        self._bump(new)
        self._put(key, new)
        self._emit(res, "MODIFIED", new, old)
        if old["metadata"].get("ownerReferences") != meta.get("ownerReferences"):
            self._release_owners_of(old, new)
        return copy.deepcopy(new)

    def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        grace_period: int | None = None,
        propagation: str | None = None,
        dry_run: bool = False,
        preconditions: dict | None = None,
    ) -> dict:
        """Delete an object (DELETE); returns the object as last seen (with ``dry_run``: as it
        would be, nothing changed).

        ``preconditions`` (DeleteOptions ``{"uid", "resourceVersion"}``): a value that differs
        from the object's is a 409 Conflict worded as kube-apiserver's
        (``Operation cannot be fulfilled on pods "x": Precondition failed: UID in
        precondition: a, UID in object meta: b``), nothing deleted; so a client never deletes
        a newer object of the same name.
        https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/delete-options/

        A pod bound to a node and not finished is only marked (``deletionTimestamp``,
        ``deletionGracePeriodSeconds`` = ``grace_period`` or its
        ``terminationGracePeriodSeconds``); the kubelet removes it with `remove` once its
        processes are gone. ``grace_period=0`` removes it at once. Objects with finalizers are
        marked likewise. Raises `ApiError` 404 if absent.
        """
        key = self._key(res, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise not_found(res, name)
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            want = (preconditions or {}).get(field)
            have = old["metadata"].get(field)
            if want is not None and want != have:
                raise conflict(
                    res,
                    name,
                    f"Precondition failed: {label} in precondition: {want}, {label} in object "
                    f"meta: {have}",
                )
        if propagation is None:
            propagation = "Orphan" if res == JOBS else "Background"
        meta = old["metadata"]
        graceful = (
            res == PODS
            and old.get("spec", {}).get("nodeName")
            and old.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        )
        if graceful and grace_period is None:
            grace_period = old["spec"].get("terminationGracePeriodSeconds", 30)
        if propagation == "Foreground" and res != PODS:
            return self._delete_foreground(res, key, old, dry_run)
        if meta.get("finalizers") or (graceful and grace_period):
            if meta.get("deletionTimestamp"):
                if not dry_run:
                    self._pending_policy[key] = propagation
                return copy.deepcopy(old)
            new = copy.deepcopy(old)
            when = datetime.datetime.now(datetime.timezone.utc)
            if graceful:
                when += datetime.timedelta(seconds=grace_period or 0)
                new["metadata"]["deletionGracePeriodSeconds"] = grace_period
            new["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            if dry_run:
                return new
            self._pending_policy[key] = propagation
            self._bump(new)
            self._put(key, new)
            self._emit(res, "MODIFIED", new, old)
            return copy.deepcopy(new)
        if dry_run:
            return copy.deepcopy(old)
        self._pending_policy[key] = propagation
        if res == NAMESPACES:
            for other in RESOURCES:
                if other.namespaced:
                    for obj in list(self.iter(other, name)):
                        self.delete(other, name, obj["metadata"]["name"], grace_period=0)
        return self._remove_key(res, key)

    def _delete_foreground(self, res: Resource, key: Key, old: dict, dry_run: bool) -> dict:
        """Mark ``old`` with ``deletionTimestamp`` and the ``foregroundDeletion`` finalizer,
        delete its dependents, and release it at once if none blocks it. Returns the owner as
        stored after that (still there, marked, while a blocking dependent is left; as last
        seen if it went). With ``dry_run`` nothing changes and the marked owner is returned."""
        new = copy.deepcopy(old)
        meta = new["metadata"]
        meta.setdefault("deletionTimestamp", now_iso())
        if FOREGROUND not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), FOREGROUND]
        if dry_run:
            return new
        self._pending_policy[key] = "Background"
        if new != old:
            self._bump(new)
            self._put(key, new)
            self._emit(res, "MODIFIED", new, old)
        uid = meta["uid"]
        for (rkey, ns, name), obj in list(self._objects.items()):
            if (rkey, ns, name) not in self._objects:
                continue
            if not any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or []):
                continue
            dep_res = next(r for r in RESOURCES if r.key == rkey)
            dep_uid = obj["metadata"]["uid"]
            has_own = any(
                ref.get("uid") == dep_uid
                for other in self._objects.values()
                for ref in other["metadata"].get("ownerReferences") or []
            )
            self.delete(dep_res, ns, name, propagation="Foreground" if has_own else "Background")
        released = self._release_foreground(uid)
        if released is not None:
            return released
        current = self._objects.get(key)
        return copy.deepcopy(current if current is not None else new)

    def _blocking_dependents(self, uid: str) -> bool:
        return any(
            ref.get("uid") == uid and ref.get("blockOwnerDeletion")
            for obj in self._objects.values()
            for ref in obj["metadata"].get("ownerReferences") or []
        )

    def _release_foreground(self, uid: str) -> dict | None:
        """Drop the ``foregroundDeletion`` finalizer of the owner with ``uid`` if it is waiting
        and no blocking dependent is left (which removes it unless other finalizers remain).
        Returns the owner as last stored, or None if there is no such waiting owner or it
        must still wait."""
        for key, owner in list(self._objects.items()):
            meta = owner["metadata"]
            if meta.get("uid") != uid:
                continue
            if not meta.get("deletionTimestamp") or FOREGROUND not in (
                meta.get("finalizers") or []
            ):
                return None
            if self._blocking_dependents(uid):
                return None
            new = copy.deepcopy(owner)
            new["metadata"]["finalizers"] = [
                f for f in new["metadata"]["finalizers"] if f != FOREGROUND
            ]
            if not new["metadata"]["finalizers"]:
                del new["metadata"]["finalizers"]
            res = next(r for r in RESOURCES if r.key == key[0])
            return self._store_update(res, key, owner, new)
        return None

    def _release_owners_of(self, old: dict, new: dict | None) -> None:
        """After ``old`` went (``new`` None) or lost owner references, release any owner it was
        blocking that waits in the foreground."""
        kept = {r.get("uid") for r in (new or {}).get("metadata", {}).get("ownerReferences") or []}
        for ref in old["metadata"].get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion") and ref.get("uid") not in kept:
                self._release_foreground(ref["uid"])

    def remove(self, res: Resource, namespace: str | None, name: str) -> dict | None:
        """Remove an object at once (kubelet: processes gone). Returns it, or None if gone."""
        key = self._key(res, namespace, name)
        if key not in self._objects:
            return None
        return self._remove_key(res, key)

    def _remove_key(self, res: Resource, key: Key) -> dict:
        old = self._objects.pop(key)
        self._by_res.get(key[0], {}).pop(key, None)
        gone = copy.deepcopy(old)
        self._bump(gone)
        self._emit(res, "DELETED", gone, old)
        policy = self._pending_policy.pop(key, "Background")
        self._collect_dependents(old["metadata"]["uid"], policy)
        self._release_owners_of(old, None)
        return copy.deepcopy(gone)

    def _collect_dependents(self, uid: str, policy: str) -> None:
        for (rkey, ns, name), obj in list(self._objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs):
                continue
            res = next(r for r in RESOURCES if r.key == rkey)
            if policy == "Orphan":

                def drop(o: dict, uid: str = uid) -> None:
                    kept = [r for r in o["metadata"]["ownerReferences"] if r.get("uid") != uid]
                    o["metadata"]["ownerReferences"] = kept

                self.mutate(res, ns, name, drop)
            elif (rkey, ns, name) in self._objects:
                self.delete(res, ns, name)

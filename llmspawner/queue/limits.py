"""How much input the queue accepts, and the bounded parsing that enforces it: the one place.

Every limit is checked *before* the work it bounds, so bad input costs the queue a bounded,
small amount of time and memory and is answered with a JSON 4xx that names the limit and the
request field (``docs/queue-api.md``, "Limits"):

========================  ==========  ======  ===================================================
limit                     value       status  what
========================  ==========  ======  ===================================================
``max_body_bytes``        1 MiB       413     a request body (the REST API's JSON, the page's form)
``max_config_bytes``      64 KiB      413     a training config: its UTF-8 text, or a JSON object
                                              measured as compact JSON
``max_config_depth``      32 levels   400     nesting of mappings and lists (the top-level mapping
                                              is level 1; a body may be one level deeper)
``yaml_aliases``          0           400     YAML aliases (``*name``): an alias can expand to far
                                              more data than its text ("billion laughs")
``max_number_chars``      32          400     the text of one YAML number (a YAML 1.1 base-60 int
                                              such as ``1:2:3:...`` costs quadratic time)
``check_seconds``         10 s        503     parsing and checking one config, off the event loop
========================  ==========  ======  ===================================================

A LLaMA-Factory training config is one to a few KiB (``examples/train_lora/*.yaml`` upstream:
under 1 KiB; with an inline DeepSpeed config about 2 KiB), so 64 KiB is generous, and
32 levels are far beyond the 3-4 of a DeepSpeed mapping. At these limits the slowest config
to parse and check takes about half a second of CPU (a flow list of one-digit numbers;
measured by ``benchmarks/queue_bad_input.py``), which :func:`off_loop` runs in a worker
process, so that the service's event loop keeps answering everyone else.

The order of the checks (each one bounds the cost of the next):

1. the body's size, counted while it arrives (the handlers read it as a stream, so nothing
   above the limit is kept; tornado's own ``max_body_size`` would close the connection
   instead of answering, and the hub's proxy would turn that into a 503);
2. the config text's size: ``len`` of its UTF-8 encoding;
3. nesting: for JSON, a scan of the bytes with C-speed operations (strings removed, brackets
   counted) before :func:`json.loads`; for YAML, a pass over libyaml's events (its parser is a
   state machine with a depth limit of its own, and events are not composed into a tree)
   that also refuses aliases and over-long numbers, before PyYAML composes and constructs
   the document (the event pass costs about a fifth of the parse);
4. the parse itself (PyYAML's safe loader, or :func:`json.loads`).

The CLI (:mod:`.cli`) runs the same :func:`check_config_text` before it sends anything. This
module imports only the standard library at import time (the in-pod client must stay light);
PyYAML, a dependency of every llmspawner install, is imported when YAML is checked.

PyYAML's C loader (``yaml.CSafeLoader``, libyaml) is used when PyYAML was built with it (the
PyPI wheels are), else the pure-Python ``SafeLoader``, about six times slower.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import functools
import json
import multiprocessing
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

KiB = 1024
MiB = 1024 * KiB

#: Largest request body (bytes); larger ones are read to the end, discarded, and answered 413.
MAX_BODY_BYTES = 1 * MiB
#: Largest training config (bytes of UTF-8 text, or of a JSON object as compact JSON).
MAX_CONFIG_BYTES = 64 * KiB
#: Deepest nesting of mappings and lists in a training config (the top level is 1).
MAX_CONFIG_DEPTH = 32
#: Deepest nesting of a JSON request body: a config object sits one level inside it.
MAX_BODY_DEPTH = MAX_CONFIG_DEPTH + 1
#: Longest YAML number (characters); longer ones are refused before they are converted.
MAX_NUMBER_CHARS = 32
#: Most problems of one config that are listed (the rest are counted).
MAX_LISTED_PROBLEMS = 50
#: Longest time to parse and check one config off the event loop (seconds), queueing included.
CHECK_SECONDS = 10.0

T = TypeVar("T")


class LimitExceeded(ValueError):
    """Input over one of the limits; answered as JSON ``{"error", "field", "limit"}``.

    Attributes:
        status: the HTTP status (413 for sizes, 400 for nesting, aliases and numbers, 503 when
            the check ran out of time).
        message: a sentence naming the limit and its value.
        field: the request field at fault (``body``, ``config``).
        limit: the limit's name (``max_body_bytes``, ``max_config_bytes``,
            ``max_config_depth``, ``yaml_aliases``, ``max_number_chars``, ``check_seconds``).
    """

    def __init__(self, status: int, message: str, *, field: str, limit: str):
        super().__init__(message)
        self.status, self.message, self.field, self.limit = status, message, field, limit

    def __reduce__(self):  # pickled whole from the checks' worker process
        return _limit_exceeded, (self.status, self.message, self.field, self.limit)

    def to_json(self) -> dict:
        """The error body of the REST API (``docs/queue-api.md``)."""
        return {"error": self.message, "field": self.field, "limit": self.limit}


def _limit_exceeded(status, message, field, limit) -> LimitExceeded:
    return LimitExceeded(status, message, field=field, limit=limit)


def size_text(n: int) -> str:
    """``n`` bytes for people: ``"64 KiB (65536 bytes)"``."""
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit} ({n} bytes)"
    return f"{n} bytes"


# -- sizes -------------------------------------------------------------------------------------


def check_body_size(size: int) -> None:
    """Refuse a request body of ``size`` bytes above :data:`MAX_BODY_BYTES` (413, ``body``)."""
    if size > MAX_BODY_BYTES:
        raise LimitExceeded(
            413,
            f"the request body has {size} bytes; the limit (max_body_bytes) is "
            f"{size_text(MAX_BODY_BYTES)}",
            field="body",
            limit="max_body_bytes",
        )


def check_config_size(size: int, *, what: str = "") -> None:
    """Refuse a config of ``size`` bytes above :data:`MAX_CONFIG_BYTES` (413, ``config``)."""
    if size > MAX_CONFIG_BYTES:
        raise LimitExceeded(
            413,
            f"the training config has {size} bytes{what}; the limit (max_config_bytes) is "
            f"{size_text(MAX_CONFIG_BYTES)}",
            field="config",
            limit="max_config_bytes",
        )


def _too_deep(field: str, max_depth: int, where: str = "") -> LimitExceeded:
    what = "request body" if field == "body" else "training config"
    return LimitExceeded(
        400,
        f"the {what} is nested more than {max_depth} levels deep{where}; the limit "
        f"(max_config_depth) is {MAX_CONFIG_DEPTH} levels of mappings and lists",
        field=field,
        limit="max_config_depth",
    )


# -- JSON --------------------------------------------------------------------------------------

_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SQUARE = bytes.maketrans(b"{}", b"[]")


def json_too_deep(data: bytes | str, max_depth: int) -> bool:
    """Whether JSON text nests ``[`` and ``{`` (outside strings) deeper than ``max_depth``.

    C-speed operations only, linear in the text: escapes removed (``\\\\`` then ``\\"``),
    strings dropped (every other piece between quotes), brackets kept and made square; then
    each pass of ``bytes.replace(b"[]", b"")`` removes exactly one level (the innermost pairs),
    so ``max_depth`` passes decide. A 1 MiB body is scanned in milliseconds. Exact for JSON;
    for text that is not JSON an estimate (the parser refuses such text anyway).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(data.split(b'"')[::2]).translate(_SQUARE, _NOT_BRACKETS)
    if brackets.count(b"[") <= max_depth:
        return False
    for _ in range(max_depth):
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            break  # only unmatched brackets are left
        brackets = inner
    return b"[]" in brackets or brackets.count(b"[") > max_depth


def check_json_depth(data: bytes | str, *, field: str, max_depth: int) -> None:
    """Refuse JSON text nested deeper than ``max_depth`` (400, ``max_config_depth``)."""
    if json_too_deep(data, max_depth):
        raise _too_deep(field, max_depth)


def load_json_body(body: bytes) -> Any:
    """Decode a request body of JSON within the limits (size, then depth, then parse).

    Raises:
        LimitExceeded: too large (413) or too deep (400).
        ValueError: not JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``).
    """
    check_body_size(len(body))
    check_json_depth(body, field="body", max_depth=MAX_BODY_DEPTH)
    return json.loads(body or b"null")


def check_config_object(config: Any) -> None:
    """Refuse a config given as an object (a JSON body's ``config``) over the limits.

    Depth first, without recursion; then the size of its compact JSON encoding.

    Raises:
        LimitExceeded: nested too deep (400) or too large (413).
    """
    stack = [(config, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_CONFIG_DEPTH:
                raise _too_deep("config", MAX_CONFIG_DEPTH)
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, dict | list))
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False, default=str)
    check_config_size(len(text.encode("utf-8", "surrogatepass")), what=" as JSON")


# -- YAML --------------------------------------------------------------------------------------

_lock = threading.Lock()


def _too_long_number(value: str, line: int) -> LimitExceeded:
    return LimitExceeded(
        400,
        f"the training config has a number of {len(value)} characters (line {line}); the "
        f"limit (max_number_chars) is {MAX_NUMBER_CHARS}",
        field="config",
        limit="max_number_chars",
    )


def check_yaml(text: str) -> None:
    """Refuse YAML nested deeper than :data:`MAX_CONFIG_DEPTH`, with aliases, or with a
    number longer than :data:`MAX_NUMBER_CHARS`.

    One pass over libyaml's events (no tree is built, nothing is converted), stopped at the
    first violation, which names its line. (libyaml's scanner refuses flow nesting beyond
    1000 levels itself, "exceeded maximum nesting depth", which it may reach before the parser
    hands over the 33rd level: that error is this limit too.)

    Raises:
        LimitExceeded: too deep, an alias, a too long number (400).
        yaml.YAMLError: the text is not YAML (the parser's message and mark).
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    start = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
    end = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    numbers = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    resolver = yaml.resolver.Resolver()
    depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.ScalarEvent):
                if (
                    len(event.value) > MAX_NUMBER_CHARS
                    and event.tag is None
                    and event.implicit[0]
                    and resolver.resolve(yaml.ScalarNode, event.value, (True, False)) in numbers
                ):
                    raise _too_long_number(event.value, event.start_mark.line + 1)
            elif isinstance(event, start):
                depth += 1
                if depth > MAX_CONFIG_DEPTH:
                    line = f" (at line {event.start_mark.line + 1})"
                    raise _too_deep("config", MAX_CONFIG_DEPTH, line)
            elif isinstance(event, end):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise LimitExceeded(
                    400,
                    f"the training config uses the YAML alias *{event.anchor} (line "
                    f"{mark.line + 1}, column {mark.column + 1}); aliases are not allowed "
                    "(yaml_aliases): an alias can expand to far more than its text; write the "
                    "value out",
                    field="config",
                    limit="yaml_aliases",
                )
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(getattr(e, "problem", "")):
            raise _too_deep("config", MAX_CONFIG_DEPTH) from None
        raise
    finally:
        loader.dispose()


# -- configs as text ---------------------------------------------------------------------------


def looks_like_json(text: str) -> bool:
    """A config text read as JSON first (it starts with ``{``), as :func:`load_config_text`."""
    return text.lstrip().startswith("{")


def check_config_text(text: str) -> None:
    """Check a config's text against the limits without building it (the CLI's checks).

    Raises:
        LimitExceeded: over a limit.
        yaml.YAMLError: not YAML (only when the limits could not be checked to the end).
    """
    check_config_size(len(text.encode("utf-8", "surrogatepass")))
    if looks_like_json(text):
        check_json_depth(text, field="config", max_depth=MAX_CONFIG_DEPTH)
        try:
            json.loads(text)
            return
        except ValueError:
            pass  # a YAML flow mapping, or broken: YAML says which
    check_yaml(text)


def load_config_text(text: str) -> Any:
    """Parse a config's YAML or JSON text within the limits.

    JSON when it starts with ``{`` and parses as JSON, else YAML (PyYAML's safe loader:
    plain data only).

    Returns:
        The document (any YAML value; the caller checks that it is a mapping).

    Raises:
        LimitExceeded: over a limit.
        yaml.YAMLError: not YAML or JSON.
        ValueError: a JSON-looking text whose YAML reading failed in a way that is not a
            YAMLError (e.g. an integer over Python's 4300-digit limit).
    """
    import yaml

    check_config_size(len(text.encode("utf-8", "surrogatepass")))
    if looks_like_json(text):
        check_json_depth(text, field="config", max_depth=MAX_CONFIG_DEPTH)
        try:
            return json.loads(text)
        except ValueError:
            pass  # a YAML flow mapping, or broken: YAML says which
    check_yaml(text)
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


# -- off the event loop ------------------------------------------------------------------------

_executor: concurrent.futures.ProcessPoolExecutor | None = None


#: Longest wait for the checks' worker process to start (seconds): it imports what the
#: checks need (about 0.2 s: kubespawner's ``slugs.py`` only, not the package; see
#: ``llmspawner.storage``).
START_SECONDS = 120.0


def _warm() -> None:
    """Run once in a new worker: import what the checks need.

    (Its CPU priority is left as is: a lower one made checks time out on a machine busy with
    training pods, for a p99 of other requests barely better.)
    """
    from . import lf_config  # noqa: F401


_started: concurrent.futures.Future | None = None


def _pool() -> concurrent.futures.ProcessPoolExecutor:
    global _executor, _started
    with _lock:
        if _executor is None:
            # A process, not a thread: the checks are CPU-bound Python, and a thread would
            # hold the GIL that the event loop needs after every socket or SQLite call (every
            # such call waits up to the 5 ms switch interval: measured, other requests' p99
            # rose from 10 ms to ~390 ms). One worker: a burst of checks waits in line.
            # "spawn": the service runs threads, which fork would copy in an unknown state.
            _executor = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")
            )
            _started = _executor.submit(_warm)
        return _executor


def _forget(pool) -> None:
    global _executor, _started
    with _lock:
        if _executor is pool:
            _executor = _started = None
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the checks' worker within about 3 s, even one still starting (the next check
    starts a new one; :func:`.pools.stop_pool`)."""
    from .pools import stop_pool

    global _executor, _started
    with _lock:
        pool, _executor, _started = _executor, None, None
    stop_pool(pool)


def start_worker() -> None:
    """Start the checks' worker process now (in the background), not at the first check."""
    _pool()


async def worker_ready() -> None:
    """Return once the checks' worker process has started (starting it if need be).

    Raises:
        LimitExceeded: 503 ``check_seconds`` when it took more than :data:`START_SECONDS`.
    """
    _pool()
    started = _started
    if started is not None and started.done() and started.exception() is None:
        return  # the usual case: no future to wrap, nothing to wait for
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(started)), START_SECONDS)
    except asyncio.TimeoutError:
        raise LimitExceeded(
            503,
            f"the queue's config checker has not started within {START_SECONDS:g} s; retry shortly",
            field="config",
            limit="check_seconds",
        ) from None


#: Most calls of :func:`off_loop` sent to the worker process in one round trip.
MAX_BATCH = 64


def _run_batch(calls: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """Run in the worker: ``[(True, result) or (False, exception), ...]``, one per call.

    An exception that cannot be pickled comes back as a :class:`RuntimeError` naming it
    (alone, it would fail the whole batch's answer).
    """
    import pickle

    out = []
    for call in calls:
        try:
            out.append((True, call()))
        except Exception as e:
            try:
                pickle.dumps(e)
            except Exception:
                e = RuntimeError(f"{type(e).__name__}: {e}")
            out.append((False, e))
    return out


class _Batches:
    """The calls of :func:`off_loop` waiting for the worker, on one event loop.

    At most one batch is with the worker at a time; the calls that arrive meanwhile go
    together in the next one (as :class:`~llmspawner.queue.db.JobInserter` does for commits):
    under a burst of submits the service then pays the round trip's fixed cost (pickling,
    the executor's threads, waking the loop) once per batch instead of once per call. The
    worker runs one call at a time either way.
    """

    def __init__(self):
        self.pending: list[tuple[Callable[[], Any], asyncio.Future]] = []
        self.sender: asyncio.Task | None = None

    def add(self, call: Callable[[], Any]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((call, future))
        if self.sender is None or self.sender.done():
            self.sender = asyncio.ensure_future(self._send_all())
        return future

    async def _send_all(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch = [(c, f) for c, f in self.pending[:MAX_BATCH] if not f.done()]
            del self.pending[:MAX_BATCH]
            if not batch:
                continue  # every caller gave up (timed out) before it was sent
            pool = _pool()
            try:
                outcomes = await loop.run_in_executor(pool, _run_batch, [c for c, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as e:
                if isinstance(e, concurrent.futures.process.BrokenProcessPool):
                    _forget(pool)  # the worker died (killed): the next call starts a new one
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if not future.done():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batches] = (
    weakref.WeakKeyDictionary()
)


async def off_loop(fn: Callable[..., T], *args, seconds: float = CHECK_SECONDS) -> T:
    """Run ``fn(*args)`` in the checks' worker process; return its result.

    Keeps CPU-bound parsing and validation off the event loop and out of its GIL. ``fn``,
    its arguments, result and exceptions travel by pickle (module-level functions,
    :func:`functools.partial` of them; :class:`LimitExceeded` and
    :class:`~llmspawner.queue.lf_config.ConfigInvalid` pickle whole). Calls made while the
    worker is busy go to it together, in one round trip (:class:`_Batches`). Its inputs are
    bounded by the limits above, so it ends in bounded time; ``seconds`` bounds the wait
    (queueing behind other checks included, the worker's start-up not: up to
    :data:`START_SECONDS`), after which the caller gets a 503 and the work finishes unseen
    (or, not yet sent, is not run).

    Raises:
        LimitExceeded: 503 ``check_seconds`` when ``seconds`` passed, or when the worker
            died (it is restarted for the next call).
        Exception: whatever ``fn`` raises.
    """
    await worker_ready()  # a start-up is not the check's time
    loop = asyncio.get_running_loop()
    batches = _batches.get(loop)
    if batches is None:
        batches = _batches[loop] = _Batches()
    call = functools.partial(fn, *args) if args else fn
    try:
        return await asyncio.wait_for(batches.add(call), seconds)
    except concurrent.futures.process.BrokenProcessPool:
        raise LimitExceeded(
            503,
            "the queue's config checker stopped; it is being restarted: retry shortly",
            field="config",
            limit="check_seconds",
        ) from None
    except asyncio.TimeoutError:
        raise LimitExceeded(
            503,
            f"checking the training config took more than {seconds:g} s (check_seconds): the "
            "queue is busy; retry shortly",
            field="config",
            limit="check_seconds",
        ) from None

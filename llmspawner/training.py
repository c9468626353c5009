"""The training command of a user's pod: ``llamafactory-cli train``, then its results into
its MLflow run.

A queue Job runs ``python3 -m llmspawner.training train CONFIG`` (:mod:`.queue.k8s_objects`);
LlamaBoard, which starts ``llamafactory-cli train <saves/.../training_args.yaml>`` itself
(``llamafactory/webui/runner.py``, ``Runner._launch``: ``Popen(["llamafactory-cli", "train",
...])``), finds the same wrapper first on its ``PATH`` (:func:`shim_dir`, a ``llamafactory-cli``
that hands ``train`` to :func:`run_training` and everything else to the real one).

Why a wrapper, and not transformers' own ``HF_MLFLOW_LOG_ARTIFACTS=1``: its ``MLflowCallback``
(``transformers/integrations/integration_utils.py``, transformers 5.6) logs each *checkpoint*
at ``on_save`` as an MLflow *pyfunc model* (``mlflow.pyfunc.log_model``, in MLflow 3 a logged
model of the experiment, not files of the run, with a pip-requirements inference per
checkpoint), ends the run at ``on_train_end``, *before* LLaMA-Factory saves the final adapter
(``trainer.save_model()`` after ``trainer.train()`` in ``llamafactory/train/sft/workflow.py``),
and never logs ``trainer_log.jsonl``/``running_log.txt``. :func:`llmspawner.tracking.tracking_env`
therefore turns it off and this module does the upload:

1. When the config reports to MLflow (``report_to: mlflow`` or ``all``) and the pod has
   ``MLFLOW_TRACKING_URI``: the run is created first, in ``MLFLOW_EXPERIMENT_NAME``, with the
   config's ``run_name``, the tags of ``MLFLOW_TAGS`` (a queue job's id) and
   :data:`OUTPUT_DIR_TAG`; the training gets ``MLFLOW_RUN_ID``, so ``MLflowCallback`` resumes
   that run (``mlflow.start_run`` reads ``MLFLOW_RUN_ID``) and its metrics and parameters land
   there.
2. The training runs as a child process, its stdout and stderr copied to ``train.log`` in the
   output folder (all of it) and passed on: for a queue Job both unchanged (the pod's log);
   for LlamaBoard (:func:`shim_main`) stdout unchanged (the server's, the pod's log) but
   stderr *never* to LlamaBoard's pipe while the training runs, only a bounded tail at exit
   (:class:`PipeTail`), see "LlamaBoard's stderr pipe" below. SIGTERM/SIGINT (and for
   LlamaBoard SIGABRT, its Abort button) are passed on.
3. Afterwards, also after a failure, the results are uploaded as the run's artifacts
   (:func:`artifact_plan`): the adapter (or the full model) under ``adapter/`` (``model/``),
   the logs under ``logs/``. Upload goes through MLflow's client with the pod's own
   ``MLFLOW_TRACKING_TOKEN``: to the tracking server's proxied artifact store
   (``mlflow-artifacts:``, ``mlflow server --artifacts-destination``), where MLflow's auth
   app lets only the run's owner write. An experiment whose artifact location is not the
   proxied store (a local path left by an old server) gets no upload: the files would land in
   the pod's own file system; one clear line says so. A failed training's run is marked
   ``FAILED``.
4. When the config asks for it (``register_model: <name>``, the queue's own key, which is
   taken out of the config LLaMA-Factory reads) and the training succeeded, the uploaded
   weights become a new version of the registered model ``<name>`` (made when missing), with
   the user's own token: MLflow's auth app makes its creator its owner (``MANAGE``).

LlamaBoard's stderr pipe: LLaMA-Factory 0.9.5's ``Runner._launch`` starts
``Popen(["llamafactory-cli", "train", <yaml>], stderr=PIPE, text=True)`` and reads that pipe
only in ``Runner.monitor``, the generator behind the page's Gradio event stream
(https://github.com/hiyouga/LlamaFactory/issues/10180). When the stream ends (a proxy's
request timeout, a dropped connection), nobody reads it: once its 64 KiB buffer is full, a
blocking write stalls the training in ``write(2)``, alive and holding its GPU. The shim
therefore writes nothing to that pipe while the training runs; LlamaBoard shows progress and
the loss curve from files of the output folder (``running_log.txt``, ``trainer_log.jsonl``:
``llamafactory/webui/control.py`` ``get_trainer_info``), never from the pipe, so nothing is
lost for the page, and reopening LlamaBoard shows the run. At exit the last
:data:`PIPE_TAIL` bytes of the training's stderr (on failure: LlamaBoard's "Failed" box shows
what it read from the pipe) are written without blocking, as much as the pipe has room for
(``F_GETPIPE_SZ`` less ``FIONREAD``); the shim's own lines are written without blocking too
and dropped when the pipe is full. :mod:`llmspawner.singleuser.runner_check` checks at
LlamaBoard's start that the installed runner still launches trainings that way.

A model that is neither a folder nor in the user's Hugging Face cache, on a cluster without
the Hub (``HF_HUB_OFFLINE``), stops the training at once with one sentence naming the shared
models folder and what it holds (:func:`missing_model`), instead of transformers' connection
error after the MLflow run was made.

MLflow trouble never fails the training: without a run the training runs as it would
without this wrapper (MLflow's HTTP calls are bounded by ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` from :func:`llmspawner.tracking.tracking_env`).
The exit status is the training's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Tag of the run naming the training's output folder (as the pod sees it).
OUTPUT_DIR_TAG = "llmspawner.output_dir"
#: Tag of the run naming the artifact folder of the trained weights (``adapter`` or ``model``).
WEIGHTS_TAG = "llmspawner.weights"
#: Tag of the run naming its registered model version, ``<name>/<version>``.
MODEL_VERSION_TAG = "llmspawner.model_version"
#: The queue's own config key (:data:`llmspawner.queue.lf_config.REGISTER_KEY`): the
#: registered model the adapter becomes a version of; taken out before LLaMA-Factory reads it.
REGISTER_KEY = "register_model"
#: The copy of the training's stdout and stderr, in the output folder.
TRAIN_LOG = "train.log"
#: Files of the output folder uploaded under ``logs/`` (LLaMA-Factory's and LlamaBoard's).
LOG_FILES = (
    "trainer_log.jsonl",  # LLaMA-Factory's LogCallback: one JSON line per logging step
    "running_log.txt",  # LlamaBoard's run (LLAMABOARD_ENABLED): the training's log lines
    TRAIN_LOG,
    "training_args.yaml",  # LlamaBoard's config of the run
    "llamaboard_config.yaml",  # LlamaBoard's form values of the run
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "training_loss.png",
    "training_eval_loss.png",
    "training_eval_accuracy.png",
)
#: The most of a LlamaBoard training's stderr written to LlamaBoard's pipe at exit (bytes):
#: the end of a traceback, for LlamaBoard's "Failed" box (which shows what it read); the whole
#: output is in :data:`TRAIN_LOG`.
PIPE_TAIL = 16 * 1024
#: Bytes read from a child's pipe at a time.
_CHUNK = 64 * 1024
#: Exit status of a training refused before it starts (:func:`missing_model`).
EXIT_REFUSED = 2
#: The environment variable that turns the upload off (``0``); set by nothing in llmspawner.
ENABLE_ENV = "LLMSPAWNER_MLFLOW_ARTIFACTS"
#: Schemes of artifact locations that are not the pod's own file system.
REMOTE_SCHEMES = ("mlflow-artifacts:", "http:", "https:", "s3:", "gs:", "wasbs:", "abfss:")
_REPORT_ALL = "all"


def log(message: str) -> None:
    """One line on stderr, prefixed ``llmspawner training:`` (the pod's log, LlamaBoard's)."""
    print(f"llmspawner training: {message}", file=sys.stderr, flush=True)


def reports_to_mlflow(config: Mapping) -> bool:
    """Whether a training config reports to MLflow: ``report_to`` is ``mlflow`` or ``all``,
    or a list or comma-separated string holding one of them (transformers'
    ``TrainingArguments.report_to``; ``none`` or unset: no)."""
    value = config.get("report_to")
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",")]
    elif isinstance(value, list):
        names = [str(v).strip() for v in value]
    else:
        return False
    return "mlflow" in names or _REPORT_ALL in names


def is_remote_artifact_location(uri: str | None) -> bool:
    """Whether an experiment's or run's artifact URI is off the pod (the proxied store
    ``mlflow-artifacts:`` or an object store); ``False`` for a local path or ``file:``."""
    return bool(uri) and uri.startswith(REMOTE_SCHEMES)


def artifact_plan(output_dir: Path) -> list[tuple[Path, str]]:
    """What of a training's output folder becomes which artifact folder of its run (pure
    apart from listing the folder).

    - ``adapter/``: the top-level files that are not logs, when ``adapter_config.json`` is
      there (LoRA and other PEFT methods); otherwise ``model/`` (full or freeze tuning);
    - ``logs/``: the files of :data:`LOG_FILES` that exist.

    ``checkpoint-*`` and other sub-folders stay in the output folder only (the adapter of the
    last step is the top-level one).

    Returns:
        ``[(local file, artifact folder), ...]`` in name order; empty for a missing folder.
    """
    if not output_dir.is_dir():
        return []
    files = sorted(p for p in output_dir.iterdir() if p.is_file() and not p.is_symlink())
    weights = weights_folder(output_dir)
    plan = []
    for path in files:
        plan.append((path, "logs" if path.name in LOG_FILES else weights))
    return plan


def weights_folder(output_dir: Path) -> str:
    """``adapter`` or ``model``: the artifact folder :func:`artifact_plan` puts weights in."""
    return "adapter" if (output_dir / "adapter_config.json").is_file() else "model"


def read_config(path: str) -> dict:
    """The training config file's mapping (YAML or JSON); ``{}`` when unreadable."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        log(f"cannot read the training config {path}: {e}")
        return {}
    return data if isinstance(data, dict) else {}


def _tags(environ: Mapping[str, str], output_dir: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    raw = environ.get("MLFLOW_TAGS")
    if raw:
        try:
            tags.update({str(k): str(v) for k, v in json.loads(raw).items()})
        except (ValueError, AttributeError):
            log("MLFLOW_TAGS is not a JSON object; ignored")
    tags[OUTPUT_DIR_TAG] = output_dir
    return tags


class RunUpload:
    """The MLflow side of one training: create the run, upload the results, end the run.

    Args:
        environ: the pod's environment (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``,
            ``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TAGS``); MLflow's client reads the process
            environment, which must hold the same.
        client: an ``mlflow.MlflowClient`` (injectable for tests; made on first use).
    """

    def __init__(self, environ: Mapping[str, str], client=None):
        self.environ = environ
        self._client = client
        self.run_id: str | None = None
        self.artifact_uri: str | None = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.environ["MLFLOW_TRACKING_URI"])
        return self._client

    def start(self, *, run_name: str | None, output_dir: str) -> str | None:
        """Create the run; return its id, or ``None`` (logged) when MLflow failed."""
        name = self.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        try:
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(name)
            )
            if experiment is None:
                experiment = self.client.get_experiment(experiment_id)
            run = self.client.create_run(
                experiment_id, run_name=run_name or None, tags=_tags(self.environ, output_dir)
            )
        except Exception as e:  # MLflow's client raises MlflowException and requests' errors
            log(f"no MLflow run for the results (MLflow failed: {_short(e)}); training anyway")
            return None
        self.run_id = run.info.run_id
        self.artifact_uri = run.info.artifact_uri
        if not is_remote_artifact_location(experiment.artifact_location):
            log(
                f"MLflow experiment {name!r} keeps its artifacts at "
                f"{experiment.artifact_location!r}, a path on the machine that writes them, "
                "not the tracking server's proxied store (mlflow-artifacts:); the adapter and "
                "logs are not uploaded (an admin can make a new experiment, see docs/mlflow.md)"
            )
            self.artifact_uri = None
        log(f"MLflow run {self.run_id} in experiment {name!r}")
        return self.run_id

    def upload(self, output_dir: Path) -> list[str]:
        """Upload :func:`artifact_plan` of ``output_dir`` to the run; return the artifact
        paths uploaded (``adapter/adapter_model.safetensors``, ...). Failures are logged."""
        if self.run_id is None or self.artifact_uri is None:
            return []
        done = []
        for path, folder in artifact_plan(output_dir):
            try:
                self.client.log_artifact(self.run_id, str(path), folder)
            except Exception as e:
                log(f"could not upload {path.name} to the MLflow run: {_short(e)}")
                continue
            done.append(f"{folder}/{path.name}")
        if done:
            try:
                self.client.set_tag(self.run_id, WEIGHTS_TAG, weights_folder(output_dir))
            except Exception as e:
                log(f"could not tag the MLflow run: {_short(e)}")
            log(f"uploaded {len(done)} files to MLflow run {self.run_id}: {', '.join(done)}")
        return done

    def register(self, name: str, folder: str) -> str | None:
        """Register ``runs:/<run>/<folder>`` as a new version of the registered model ``name``
        (created when missing); return ``"<name>/<version>"``, or ``None`` (logged)."""
        if self.run_id is None or self.artifact_uri is None:
            return None
        try:
            try:
                self.client.create_registered_model(name)
            except Exception as e:
                if "RESOURCE_ALREADY_EXISTS" not in str(e):
                    raise
            version = self.client.create_model_version(
                name, f"runs:/{self.run_id}/{folder}", run_id=self.run_id
            )
        except Exception as e:
            log(f"could not register the adapter as a version of {name!r}: {_short(e)}")
            return None
        ref = f"{name}/{version.version}"
        try:
            self.client.set_tag(self.run_id, MODEL_VERSION_TAG, ref)
        except Exception as e:
            log(f"could not tag the MLflow run: {_short(e)}")
        log(f"registered the adapter as version {version.version} of model {name!r}")
        return ref

    def finish(self, returncode: int) -> None:
        """End the run: ``KILLED`` after a training stopped by SIGTERM/SIGINT (its pod deleted,
        evicted, preempted or its job cancelled: the kubelet's SIGTERM, passed on; exit status
        ``-15`` or ``143``), ``FAILED`` after any other failure (a child SIGKILLed alone is
        the kernel's out-of-memory killer), ``FINISHED`` if still running."""
        if self.run_id is None:
            return
        try:
            status = self.client.get_run(self.run_id).info.status
            stopped = (signal.SIGTERM, signal.SIGINT)
            if -returncode in stopped or returncode - 128 in stopped:
                self.client.set_terminated(self.run_id, "KILLED")
            elif returncode != 0:
                self.client.set_terminated(self.run_id, "FAILED")
            elif status == "RUNNING":
                self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as e:
            log(f"could not end the MLflow run: {_short(e)}")


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


class PipeTail:
    """A file descriptor that is written without ever blocking: what does not fit is dropped.

    For LlamaBoard's stderr pipe (see the module docstring): the descriptor is made
    non-blocking (``O_NONBLOCK``, on the shim's own end of the pipe only) and every write is
    one ``write(2)`` whose unwritten rest is counted in :attr:`dropped`.

    Args:
        fd: the descriptor (the shim's stderr, 2).
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.dropped = 0
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)

    def write(self, data: bytes | str) -> int:
        """Write what fits now; return the bytes written (the rest is dropped and counted)."""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        if not data:
            return 0
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # EPIPE (LlamaBoard gone), EBADF: nobody to tell
            written = 0
        self.dropped += len(data) - written
        return written

    def room(self) -> int | None:
        """Bytes that surely fit in the pipe now, or ``None`` when ``fd`` is not a pipe (a
        file, a terminal).

        Linux keeps a pipe's data in page-sized slots (``F_GETPIPE_SZ`` bytes in all) and a
        partly read page keeps its slot, so the room is counted in whole free pages: the
        size less the pages what it holds (``FIONREAD``) may span, one more than they fill.
        """
        try:
            size = fcntl.fcntl(self.fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))
            held = int.from_bytes(
                fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder
            )
        except OSError:
            return None
        if held == 0:
            return size
        page = os.sysconf("SC_PAGE_SIZE")
        return max(0, size - (-(-held // page) + 1) * page)

    def write_tail(self, data: bytes, limit: int = PIPE_TAIL) -> int:
        """Write the last bytes of ``data`` that fit: at most ``limit`` and at most
        :meth:`room`, cut at a line start when one is near; return the bytes written."""
        room = self.room()
        keep = min(limit, len(data) if room is None else room)
        if keep <= 0:
            self.dropped += len(data)
            return 0
        tail = data[-keep:]
        if len(tail) < len(data):
            newline = tail.find(b"\n")
            if 0 <= newline < len(tail) // 4:
                tail = tail[newline + 1 :]
        self.dropped += len(data) - len(tail)
        written = self.write(tail)
        return written


class _TextSink:
    """``sys.stderr`` of the shim: text written to a :class:`PipeTail` (never blocks)."""

    def __init__(self, pipe: PipeTail):
        self.pipe = pipe
        self.buffer = self  # code that writes bytes to sys.stderr.buffer

    def write(self, text) -> int:
        self.pipe.write(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.pipe.fd

    @property
    def encoding(self) -> str:
        return "utf-8"


class _Tail:
    """The last ``limit`` bytes of a stream (amortised: trimmed when twice as long)."""

    def __init__(self, limit: int = PIPE_TAIL):
        self.limit = limit
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self.limit:
            del self._data[: -self.limit]

    def flush(self) -> None:
        pass

    def value(self) -> bytes:
        return bytes(self._data[-self.limit :])


def _pump(src, sinks) -> None:
    """Copy ``src`` (a child's pipe) to every sink, chunk by chunk as it comes (never a whole
    line first: tqdm's ``\r`` updates have none), until end of file. A failing sink is
    skipped; the pipe is always read to its end, so the child never blocks on it."""
    fd = src.fileno()
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except InterruptedError:  # pragma: no cover - retried by Python since 3.5
            continue
        if not chunk:
            break
        for sink in sinks:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                pass
    src.close()


def _offline(environ: Mapping[str, str]) -> bool:
    return any(
        environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _in_hf_cache(repo_id: str, environ: Mapping[str, str]) -> bool:
    """Whether ``repo_id``'s ``config.json`` is in the Hugging Face cache (``HF_HOME``)."""
    home = environ.get("HF_HOME") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "~"), ".cache"),
        "huggingface",
    )
    cache = environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    folder = Path(os.path.expanduser(cache)) / ("models--" + repo_id.replace("/", "--"))
    return any(folder.glob("snapshots/*/config.json"))


def missing_model(config: Mapping, environ: Mapping[str, str]) -> str | None:
    """Why the training cannot get its base model, or ``None`` when it can (I/O: looks at
    the folders).

    ``model_name_or_path`` is fine when it is an existing folder; a path that does not exist
    (absolute, or under the shared models folder) is a problem; a Hub id (``org/name``) is a
    problem only when the pod has no Hub (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` on) and
    the id is not in the user's Hugging Face cache (``$HF_HOME/hub``, the layout of
    https://huggingface.co/docs/huggingface_hub/guides/manage-cache).

    Returns:
        One sentence naming the model, the shared models folder
        (``$LLMSPAWNER_MODELS_DIR``) and the models it holds, and what to do.
    """
    model = config.get("model_name_or_path")
    if not isinstance(model, str) or not model or os.path.isdir(os.path.expanduser(model)):
        return None
    from .singleuser.workspace import MODELS_DIR_ENV, shared_models

    models_dir = environ.get(MODELS_DIR_ENV) or ""
    held = ", ".join(p.name for p in shared_models(Path(models_dir))) if models_dir else ""
    where = (
        f"the shared models folder {models_dir} holds: {held or 'no model'}"
        if models_dir
        else "this pod has no shared models folder"
    )
    looks_like_path = model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
    if looks_like_path:
        return (
            f"the base model folder {model} does not exist ({where}): choose one of those in "
            "LlamaBoard's Model path (or the config's model_name_or_path), or ask an admin to "
            "add it (docs/deploy.md, 'Base models')"
        )
    if _offline(environ) and not _in_hf_cache(model, environ):
        return (
            f"the base model {model!r} is not in the shared models folder nor in your "
            f"Hugging Face cache, and this cluster has no Hugging Face Hub (HF_HUB_OFFLINE=1; "
            f"{where}): choose one of those in LlamaBoard's Model path (or the config's "
            "model_name_or_path), or ask an admin to add it (docs/deploy.md, 'Base models')"
        )
    return None


def run_training(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    cli: str | None = None,
    pipe: PipeTail | None = None,
) -> int:
    """Run ``<cli> train <config> [overrides...]`` with the MLflow run and upload of the module
    docstring; return the training's exit status.

    Args:
        argv: ``["train", config, *overrides]`` (as for ``llamafactory-cli``).
        environ: the environment (default ``os.environ``).
        cli: the real ``llamafactory-cli`` (default: found on ``PATH`` by :func:`real_cli`).
        pipe: LlamaBoard's stderr pipe (:func:`shim_main`): the training's stderr goes to
            ``train.log`` only, and its last :data:`PIPE_TAIL` bytes to ``pipe`` at exit;
            ``None`` (a queue Job): stderr passed through as it comes.

    Returns:
        The training's exit status; 127 when ``llamafactory-cli`` is missing,
        :data:`EXIT_REFUSED` when its base model is not there (:func:`missing_model`).
    """
    environ = dict(os.environ if environ is None else environ)
    cli = cli or real_cli(environ)
    if cli is None:
        log("llamafactory-cli is not installed (not found on PATH)")
        return 127
    argv = list(argv)
    config = read_config(argv[1]) if len(argv) > 1 else {}
    problem = missing_model(config, environ)
    if problem is not None:
        log(f"not started: {problem}")
        return EXIT_REFUSED
    register = config.pop(REGISTER_KEY, None)
    resumed = first_attempt_only(config, environ)
    if resumed is not None:
        log(resumed)
    # LLaMA-Factory refuses unknown keys: run a copy without the queue's key (and without an
    # overwrite_output_dir that would throw an earlier attempt's checkpoints away)
    rewritten = register is not None or resumed is not None
    if rewritten:
        argv[1] = _write_config(config)
    command = [cli, *argv]
    output_dir = config.get("output_dir")
    upload = None
    if (
        environ.get("MLFLOW_TRACKING_URI")
        and environ.get(ENABLE_ENV, "1") != "0"
        and reports_to_mlflow(config)
        and isinstance(output_dir, str)
        and output_dir
    ):
        output_dir = os.path.abspath(output_dir)
        upload = RunUpload(environ)
        if upload.start(run_name=config.get("run_name"), output_dir=output_dir):
            environ["MLFLOW_RUN_ID"] = upload.run_id
        else:
            upload = None
    try:
        returncode = _run_child(command, environ, output_dir, pipe=pipe)
    finally:
        if rewritten:
            with contextlib.suppress(OSError):
                os.unlink(argv[1])
    if upload is not None:
        done = upload.upload(Path(output_dir))
        if isinstance(register, str) and register and returncode == 0 and done:
            upload.register(register, weights_folder(Path(output_dir)))
        elif register and not isinstance(register, str):
            log(f"{REGISTER_KEY} must be a model name here (the queue sets one), not {register!r}")
        upload.finish(returncode)
    return returncode


#: In a queue job's output folder: the id of the job whose attempt last started there.
ATTEMPT_MARKER = ".llmspawner-job"


def first_attempt_only(config: dict, environ: Mapping[str, str]) -> str | None:
    """Make a queue job's ``overwrite_output_dir: true`` apply to its first attempt only.

    LLaMA-Factory resumes from the newest ``checkpoint-*`` in ``output_dir`` unless
    ``overwrite_output_dir`` is set (``hparams/parser.py``, ``get_train_args``); its example
    configs set it. A queue job interrupted by a disruption or a preemption runs again in the
    same ``output_dir`` (:mod:`llmspawner.queue.lf_config`, "Resuming"), so when this folder's
    :data:`ATTEMPT_MARKER` names this job (``LLMSPAWNER_JOB_ID``: an earlier attempt of it
    started here), the key is removed from ``config`` (in place) and the attempt resumes.
    On the first attempt with the key set, ``checkpoint-*`` folders already there (another
    run's: transformers' overwrite leaves them, and a resume would take the highest-numbered)
    are moved into ``overwritten-<UTC time>/`` in the same folder. The marker is then
    (re)written. Outside a queue Job (no ``LLMSPAWNER_JOB_ID``: LlamaBoard)
    nothing changes.

    Args:
        config: the training config (changed in place).
        environ: the Job's environment.

    Returns:
        A line for the log when the key was removed or checkpoints were moved, else ``None``.
    """
    job = environ.get("LLMSPAWNER_JOB_ID", "")
    output_dir = config.get("output_dir")
    if not job or not isinstance(output_dir, str) or not output_dir:
        return None
    marker = Path(output_dir) / ATTEMPT_MARKER
    try:
        earlier = marker.read_text(encoding="utf-8").strip()
    except OSError:
        earlier = None
    note = None
    if config.get("overwrite_output_dir") is True and earlier == job:
        del config["overwrite_output_dir"]
        note = (
            "an earlier attempt of this job started in this output_dir: "
            "overwrite_output_dir applies to the first attempt only, so this one resumes "
            "from its last checkpoint-*"
        )
    elif config.get("overwrite_output_dir") is True:
        # transformers' overwrite leaves older checkpoint-* folders, and a requeued attempt
        # would resume from the highest-numbered one, maybe another run's: set them aside
        old = sorted(Path(output_dir).glob("checkpoint-*")) if Path(output_dir).is_dir() else []
        if old:
            aside = Path(output_dir) / time.strftime("overwritten-%Y%m%dT%H%M%SZ", time.gmtime())
            try:
                aside.mkdir(parents=True, exist_ok=True)
                for folder in old:
                    folder.rename(aside / folder.name)
                note = (
                    f"overwrite_output_dir: the earlier run's {len(old)} checkpoint folder(s) "
                    f"were moved to {aside}, so a requeued attempt resumes from this run's own"
                )
            except OSError as e:
                log(f"could not set the earlier checkpoints aside in {aside}: {_short(e)}")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(job + "\n", encoding="utf-8")
    except OSError as e:
        log(f"could not write {marker}: {_short(e)}")
    return note


def _write_config(config: dict) -> str:
    """Write ``config`` (as the training will run it) to a new temporary YAML file; its path."""
    import yaml

    fd, path = tempfile.mkstemp(prefix="llmspawner-train-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return path


def _run_child(
    command: list[str], environ: dict, output_dir, *, pipe: PipeTail | None = None
) -> int:
    """Run ``command``; copy its stdout and stderr to ``train.log`` in ``output_dir`` (when
    given and writable) and pass them on (see :func:`run_training` for ``pipe``); pass on
    SIGTERM/SIGINT (with ``pipe``, SIGABRT too: LlamaBoard's Abort signals each process of
    the tree, ``llamafactory/webui/common.py`` ``abort_process``, and Python's default for it
    would kill the shim before the training saved and the upload ran). Return its exit
    status (127: it could not be started)."""
    log_file = None
    log_path = None
    if isinstance(output_dir, str) and output_dir:
        log_path = os.path.join(output_dir, TRAIN_LOG)
        try:
            os.makedirs(output_dir, exist_ok=True)
            log_file = open(log_path, "ab")  # noqa: SIM115
        except OSError as e:
            log(f"cannot write {TRAIN_LOG} in {output_dir}: {e}")
            log_path = None
    try:
        proc = subprocess.Popen(
            command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as e:
        log(f"cannot run {command[0]}: {e}")
        if log_file:
            log_file.close()
        return 127

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {}
    signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGABRT] if pipe is not None else [])
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, forward)
    sinks = [log_file] if log_file else []
    tail = _Tail()
    err_sinks = [*sinks, tail] if pipe is not None else [sys.stderr.buffer, *sinks]
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, [sys.stdout.buffer, *sinks])),
        threading.Thread(target=_pump, args=(proc.stderr, err_sinks)),
    ]
    for t in threads:
        t.start()
    try:
        returncode = proc.wait()
    finally:
        for t in threads:
            t.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if log_file:
            log_file.close()
    if pipe is not None:
        where = log_path or "nowhere (the output folder is not writable)"
        if returncode != 0:
            pipe.write(
                f"llmspawner training: exit status {returncode}; the whole output is in "
                f"{where}; its last lines:\n".encode()
            )
            pipe.write_tail(tail.value())
        else:
            pipe.write(f"llmspawner training: finished; the whole output is in {where}\n")
    return returncode


#: The name LlamaBoard runs (``Runner._launch``).
CLI_NAME = "llamafactory-cli"
#: Marks the shim, so :func:`real_cli` never finds it as the real one.
_SHIM_MARK = "# llmspawner training shim"


def real_cli(environ: Mapping[str, str]) -> str | None:
    """The first ``llamafactory-cli`` on ``environ['PATH']`` that is not the shim."""
    for folder in environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", CLI_NAME)
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            with open(candidate, "rb") as f:
                if _SHIM_MARK.encode() in f.read(512):
                    continue
        except OSError:
            continue
        return candidate
    return None


def shim_text(python: str = sys.executable) -> str:
    """The shim ``llamafactory-cli`` script (a Python script run by ``python``)."""
    return (
        f"#!{python}\n{_SHIM_MARK}: train -> llmspawner.training, the rest -> the real one\n"
        "import sys\nfrom llmspawner.training import shim_main\nsys.exit(shim_main())\n"
    )


def shim_dir(base: str | None = None) -> str:
    """Write the shim into a folder of its own and return the folder (I/O; idempotent).

    Put the folder first on the ``PATH`` of LlamaBoard's process (:func:`llamaboard_path`);
    LlamaBoard's trainings then run through :func:`run_training`.

    Raises:
        OSError: the folder cannot be written, or exists but is not this user's alone
            (``PermissionError``).

    Args:
        base: where the folder is made; default the user's own cache folder
            (``$XDG_CACHE_HOME`` or ``~/.cache``, in the user's folder on the PVC): never a
            temp folder that other pods might share (the emulated cluster's pods share the
            host's ``/tmp``, all as uid 1000, so another user could replace the shim there).
    """
    if base is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        Path(base).mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(base) / f"llmspawner-shim-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(f"{folder} is not a folder of this user only; not used")
    script = folder / CLI_NAME
    text = shim_text()
    try:
        current = script.read_text()
    except OSError:
        current = None
    if current != text:
        tmp = folder / f".{CLI_NAME}.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, script)
    return str(folder)


def llamaboard_path(environ: Mapping[str, str], base: str | None = None) -> str:
    """``PATH`` for LlamaBoard's process: :func:`shim_dir` first, then ``environ['PATH']``.

    Always, with or without MLflow: the shim is what keeps LlamaBoard's trainings from
    stalling on their stderr pipe (module docstring); the upload is its own choice
    (``MLFLOW_TRACKING_URI``, ``LLMSPAWNER_MLFLOW_ARTIFACTS``). When the shim folder cannot
    be made, ``environ['PATH']`` unchanged and one line on stderr says what that costs."""
    path = environ.get("PATH", os.defpath)
    try:
        folder = shim_dir(base)
    except OSError as e:
        log(
            f"LlamaBoard's trainings run without the llmspawner shim ({e}): no train.log, no "
            "MLflow upload, and a training whose LlamaBoard page is gone can stall once its "
            "stderr pipe is full"
        )
        return path
    parts = [p for p in path.split(os.pathsep) if p != folder]
    return os.pathsep.join([folder, *parts])


def shim_main(argv: Sequence[str] | None = None) -> int:
    """The shim's entry: ``train ...`` → :func:`run_training` with LlamaBoard's stderr as a
    :class:`PipeTail` (``sys.stderr`` too: nothing the shim writes can block on it);
    anything else → exec the real ``llamafactory-cli`` (the process image is replaced)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        # LlamaBoard's stderr is a pipe it may stop reading: never block on it.
        pipe = PipeTail(sys.stderr.fileno())
        sys.stderr = _TextSink(pipe)
        return run_training(args, pipe=pipe)
    cli = real_cli(os.environ)
    if cli is None:
        log("llamafactory-cli is not installed (not found on PATH)")
        return 127
    os.execv(cli, [cli, *args])
    return 127  # pragma: no cover


USAGE = "usage: python3 -m llmspawner.training train CONFIG [KEY=VALUE...]"


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m llmspawner.training train CONFIG``: :func:`run_training` (a queue Job)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "train":
        print(USAGE, file=sys.stderr)
        return 2
    return run_training(args)


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "OUTPUT_DIR_TAG",
    "RunUpload",
    "artifact_plan",
    "PipeTail",
    "llamaboard_path",
    "main",
    "missing_model",
    "run_training",
    "shim_dir",
]

"""A bounded FIFO job queue in front of ONE model worker thread.

One GPU can run one diffusion job at a time, and loading a model while another job samples would
corrupt it; so every generation and every model switch is a job run in order by a single thread.
Each job carries a `concurrent.futures.Future` that the worker resolves exactly once (result or
exception), which is what guarantees that every request is answered exactly once.

A generation still running after `max_job_seconds` is interrupted (it returns what it finished) with a
warning in the log; a result that has an `interrupted_reason` attribute and came back interrupted gets the
reason (`"max_job_seconds (600 s) reached"`), which the API puts in its info JSON (A1111 has no field for it).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from animegen.serve.catalog import CheckpointEntry

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The queue already holds `max_queue` waiting jobs (HTTP 429)."""


class ServerClosedError(RuntimeError):
    """The server is shutting down and no longer runs jobs (HTTP 503)."""


class ModelBackend(Protocol):
    """What the worker drives: the real one wraps `animegen.generate.Generator`."""

    loaded: CheckpointEntry | None
    default_size: int  # the loaded model family's size for requests that set none

    def load(self, entry: CheckpointEntry) -> None: ...

    def generate(self, request: Any, progress: Callable[[int, int], None],
                 interrupt: threading.Event) -> list: ...


@dataclass
class Job:
    """One unit of work; `model` is the checkpoint the job must run on (None: the selected one)."""

    kind: str  # "generate" | "switch"
    payload: Any = None
    model: CheckpointEntry | None = None
    keep_model: bool = False  # an override that also becomes the selected model
    label: str = "txt2img"
    id: int = 0
    future: Future = field(default_factory=Future)
    interrupt: threading.Event = field(default_factory=threading.Event)
    interrupt_reason: str | None = None  # why the queue interrupted it, when it did (the deadline)
    submitted: float = field(default_factory=time.time)


@dataclass
class ProgressSnapshot:
    """The worker's state in A1111's `/sdapi/v1/progress` terms."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    progress: float = 0.0
    eta_relative: float = 0.0
    queued: int = 0


class JobQueue:
    """FIFO of at most `max_queue` waiting jobs plus the running one, served by one worker thread."""

    def __init__(self, backend: ModelBackend, selected: CheckpointEntry, max_queue: int,
                 max_job_seconds: float | None = None):
        self.backend = backend
        self.selected = selected
        self.max_queue = max_queue
        self.max_job_seconds = max_job_seconds  # a generation running longer is interrupted
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._step = 0
        self._steps = 0
        self._started = 0.0
        self._done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="animegen-model-worker", daemon=True)
        self._thread.start()

    # -- submitting -------------------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        """Enqueue `job` (FIFO) and return its future; raises QueueFullError / ServerClosedError."""
        with self._lock:  # same lock as close(): no job can slip in after the final drain
            if self._stop.is_set():
                raise ServerClosedError("the server is shutting down")
            job.id = next(self._ids)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} jobs waiting); retry later"
                ) from None
        return job.future

    def generate(self, request: Any, *, model: CheckpointEntry | None = None,
                 keep_model: bool = False, label: str = "txt2img") -> Future:
        """Queue a generation; the future resolves to the backend's list of generated images."""
        return self.submit(Job("generate", request, model=model, keep_model=keep_model, label=label))

    def switch_model(self, entry: CheckpointEntry) -> Future:
        """Queue a model switch: jobs queued before it still run on the old model."""
        return self.submit(Job("switch", model=entry, label="load model"))

    # -- control ----------------------------------------------------------------------------------
    def interrupt(self) -> bool:
        """Ask the running job to stop at its next step; True if a job was running."""
        with self._lock:
            if self._current is None:
                return False
            self._current.interrupt.set()
            return True

    def abandon(self, future: Future) -> None:
        """The caller of `future` went away: a waiting job leaves the queue (its slot is free again at once),
        the running one is interrupted."""
        with self._lock:
            if self._current is not None and self._current.future is future:
                self._current.interrupt.set()
                return
            with self._queue.mutex:  # queue.Queue's own lock and deque
                for job in self._queue.queue:
                    if job.future is future:
                        self._queue.queue.remove(job)
                        self._queue.not_full.notify()
                        break
            future.cancel()  # under the lock: the worker either has made it current (above) or will skip it

    def snapshot(self) -> ProgressSnapshot:
        """A consistent copy of the progress state (progress in [0, 1], ETA in seconds)."""
        with self._lock:
            waiting = self._queue.qsize()
            job = self._current
            if job is None:
                return ProgressSnapshot(job_count=waiting, queued=waiting, job_no=self._done)
            fraction = self._step / self._steps if self._steps else 0.0
            elapsed = time.time() - self._started
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            return ProgressSnapshot(
                job=job.label, job_count=waiting + 1, job_no=self._done,
                job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(self._started)),
                sampling_step=self._step, sampling_steps=self._steps,
                interrupted=job.interrupt.is_set(), progress=min(max(fraction, 0.0), 1.0),
                eta_relative=max(eta, 0.0), queued=waiting,
            )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the running job; waiting jobs fail with ServerClosedError."""
        with self._lock:
            self._stop.set()
            if self._current is not None:
                self._current.interrupt.set()
        self._thread.join(timeout)
        self._fail_waiting()

    # -- worker -----------------------------------------------------------------------------------
    def _fail_waiting(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServerClosedError("the server shut down before this job ran"))

    def _on_step(self, step: int, total: int) -> None:
        with self._lock:
            self._step, self._steps = int(step), int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller gave up before the job started
                self._current, self._step, self._steps, self._started = job, 0, 0, time.time()
            deadline = None
            if self.max_job_seconds is not None and job.kind == "generate":
                deadline = threading.Timer(self.max_job_seconds, self._expire, args=(job,))
                deadline.daemon = True
                deadline.start()
            try:
                result = self._execute(job)
            except BaseException as exc:
                if not isinstance(exc, (ValueError, LookupError)):
                    log.exception("job %s (%s) failed", job.id, job.kind)
                job.future.set_exception(exc)
            else:
                if job.interrupt_reason and getattr(result, "interrupted", False) \
                        and hasattr(result, "interrupted_reason"):
                    result.interrupted_reason = job.interrupt_reason
                job.future.set_result(result)
            finally:
                if deadline is not None:
                    deadline.cancel()
                with self._lock:
                    self._current = None
                    self._done += 1
        self._fail_waiting()

    def _expire(self, job: Job) -> None:
        """The deadline timer: the job ran `max_job_seconds`; interrupt it and say why."""
        job.interrupt_reason = f"max_job_seconds ({self.max_job_seconds:g} s) reached"
        log.warning("job %s (%s) interrupted: %s; it returns the images finished so far", job.id, job.label,
                    job.interrupt_reason)
        job.interrupt.set()

    def _execute(self, job: Job) -> Any:
        if job.kind == "switch":
            self._ensure(job.model)
            self.selected = job.model
            return job.model
        target = job.model or self.selected
        self._ensure(target)
        if job.model is not None and job.keep_model:
            self.selected = job.model
        return self.backend.generate(job.payload, self._on_step, job.interrupt)

    def _ensure(self, entry: CheckpointEntry) -> None:
        loaded = self.backend.loaded
        if loaded is None or loaded.path != entry.path:
            self.backend.load(entry)

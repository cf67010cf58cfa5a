"""Background jobs: long work (training, feature caching) runs here, never in a page's script run.

A job wraps a generator of events. It runs in a daemon thread owned by the process-wide
:class:`JobManager`, so Streamlit reruns, page switches and browser reloads neither stop nor
restart it. At most ``max_parallel`` jobs run at once; the others wait in a queue whose position
the pages show. Stopping is a request: the job's ``threading.Event`` is set and the work honours
it between batches.

The run folder on disk outlives the process. :func:`run_status` reads it back after a server
restart, when a run whose ``events.jsonl`` has no final event is reported as "interrupted".
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tlapp.errors import TlappError
from tlapp.events import Event, Failed, StopRequested, Stopped, to_dict
from tlapp.runs import read_events

log = logging.getLogger(__name__)

Work = Callable[[threading.Event], Iterator[Event]]

QUEUED, RUNNING, DONE, FAILED, STOPPED = "queued", "running", "done", "failed", "stopped"
INTERRUPTED = "interrupted"
FINAL_STATUSES = (DONE, FAILED, STOPPED)
_FINAL_KINDS = {"done": DONE, "failed": FAILED, "stopped": STOPPED}

EVENTS_FILE = "events.jsonl"

# Environment variable that sets how many jobs may run at once in the app's process.
MAX_PARALLEL_ENV = "TLAPP_MAX_PARALLEL"

INTERNAL_ERROR = Failed(
    "The job failed because of an internal error in tlapp.",
    "Try again; if it fails again, ask the instructor to look at the server log, which has the details.",
)


class Job:
    """One piece of long work: its status, its events so far, and a way to request a stop.

    ``events`` grows while the job runs; readers poll it with :meth:`events_since`.
    """

    def __init__(self, job_id: str, kind: str, run_dir: Path, owner: str, work: Work, manager: JobManager):
        self.id = job_id
        self.kind = kind
        self.run_dir = Path(run_dir)
        self.owner = owner
        self.status = QUEUED
        self.submitted = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.stop_event = threading.Event()
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._work = work
        self._manager = manager

    def __repr__(self) -> str:
        return f"Job({self.id!r}, kind={self.kind!r}, status={self.status!r}, run_dir='{self.run_dir}')"

    @property
    def events(self) -> list[Event]:
        """A copy of every event so far, oldest first."""
        with self._lock:
            return list(self._events)

    def events_since(self, index: int) -> list[Event]:
        """Return the events from position ``index`` on, so a poller fetches only what is new."""
        with self._lock:
            return self._events[index:]

    def add_event(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def final_event(self) -> Event | None:
        """The Done, Stopped or Failed event that ended the job, once it has ended."""
        with self._lock:
            for event in reversed(self._events):
                if event.kind in _FINAL_KINDS:
                    return event
        return None

    @property
    def queue_position(self) -> int | None:
        """1 for the next job to start, 2 for the one after...; None unless the job is queued."""
        return self._manager.queue_position(self)

    def stop(self) -> None:
        """Request a stop: a queued job is dropped at once, a running one stops between batches."""
        self._manager.stop(self)


class JobManager:
    """Runs submitted jobs in background threads, at most ``max_parallel`` at a time, in order."""

    def __init__(self, max_parallel: int = 1):
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        self.max_parallel = max_parallel
        self._jobs: dict[str, Job] = {}
        self._queue: list[Job] = []
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def submit(self, kind: str, run_dir: str | Path, work: Work, owner: str = "") -> Job:
        """Queue ``work`` and start it as soon as a slot is free; return its Job at once.

        ``work`` receives the job's stop event and yields events; the last one should be Done or
        Stopped. Raising TlappError ends the job with a Failed event carrying its message and hint.
        """
        with self._lock:
            job = Job(f"job-{next(self._ids)}", kind, Path(run_dir), owner, work, self)
            self._jobs[job.id] = job
            self._queue.append(job)
        log.info("queued %s", job)
        self._dispatch()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self, owner: str | None = None) -> list[Job]:
        """Return the jobs of ``owner`` (all jobs when None), newest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        if owner is not None:
            jobs = [job for job in jobs if job.owner == owner]
        return sorted(jobs, key=lambda job: job.submitted, reverse=True)

    def active(self, run_dir: str | Path) -> Job | None:
        """Return the queued or running job writing ``run_dir``, if any."""
        target = Path(run_dir).resolve()
        for job in self.jobs():
            if job.active and job.run_dir.resolve() == target:
                return job
        return None

    def latest(self, run_dir: str | Path) -> Job | None:
        """Return the newest job of this process for ``run_dir``, whatever its status."""
        target = Path(run_dir).resolve()
        for job in self.jobs():
            if job.run_dir.resolve() == target:
                return job
        return None

    def queue_position(self, job: Job) -> int | None:
        with self._lock:
            if job in self._queue:
                return self._queue.index(job) + 1
        return None

    def stop(self, job: Job) -> None:
        job.stop_event.set()
        with self._lock:
            was_queued = job in self._queue
            if was_queued:
                self._queue.remove(job)
        if was_queued:
            self._finish(job, STOPPED, Stopped(str(job.run_dir), None))
        log.info("stop requested for %s", job)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` has ended (for tests and the CLI); return False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while job.active:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _dispatch(self) -> None:
        """Start queued jobs while fewer than ``max_parallel`` are running."""
        while True:
            with self._lock:
                if not self._queue or len(self._running) >= self.max_parallel:
                    return
                job = self._queue.pop(0)
                self._running.add(job.id)
                job.status = RUNNING
                job.started = time.time()
            thread = threading.Thread(target=self._run, args=(job,), name=f"tlapp-{job.id}", daemon=True)
            thread.start()

    def _run(self, job: Job) -> None:
        log.info("started %s", job)
        status, final = DONE, None
        try:
            for event in job._work(job.stop_event):
                job.add_event(event)
                if event.kind in _FINAL_KINDS:
                    status = _FINAL_KINDS[event.kind]
        except TlappError as error:
            log.info("%s failed: %s", job, error)
            status, final = FAILED, Failed(error.message, error.hint)
        except StopRequested:
            status, final = STOPPED, Stopped(str(job.run_dir), None)
        except Exception:
            # The traceback goes to the server log only; the user sees a generic message.
            log.exception("%s failed with an unexpected error", job)
            status, final = FAILED, INTERNAL_ERROR

        if final is None and status == DONE and job.stop_event.is_set() and job.final_event is None:
            status = STOPPED
        with self._lock:
            self._running.discard(job.id)
        self._finish(job, status, final)
        self._dispatch()

    def _finish(self, job: Job, status: str, final: Event | None) -> None:
        """Record how ``job`` ended; ``final`` is an ending event the work itself did not yield."""
        if final is not None:
            job.add_event(final)
        job.status = status
        job.finished = time.time()
        ending = job.final_event
        if ending is not None:
            _append_final_event(job.run_dir, ending)
        log.info("finished %s", job)


def _append_final_event(run_dir: Path, final: Event) -> None:
    """Make the run folder's events.jsonl end with ``final`` unless the work already wrote one.

    The training loop writes its own Done or Stopped. Only the job runner sees a failure or a
    stop before the loop started, and without that event a restarted server would call the run
    "interrupted".
    """
    if not run_dir.is_dir():
        return
    last = read_events(run_dir)[-1:]
    if last and last[0].kind in _FINAL_KINDS:
        return
    try:
        with open(run_dir / EVENTS_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps(to_dict(final)) + "\n")
    except OSError:
        log.exception("could not write the final event to %s", run_dir)


def run_status(run_dir: str | Path, manager: JobManager | None = None) -> str:
    """Return "queued", "running", "done", "stopped", "failed" or "interrupted" for a run folder.

    A job of this process decides when there is one. Otherwise the last event on disk does, and
    a folder without a final event belongs to a job that died with an earlier server process.
    """
    job = (manager or get_manager()).latest(run_dir)
    if job is not None:
        return job.status
    events = read_events(run_dir)
    if events and events[-1].kind in _FINAL_KINDS:
        return _FINAL_KINDS[events[-1].kind]
    return INTERRUPTED


_manager: JobManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> JobManager:
    """Return the process-wide JobManager; ``TLAPP_MAX_PARALLEL`` sets its parallelism (default 1)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = JobManager(max_parallel=_max_parallel_from_env())
        return _manager


def _max_parallel_from_env() -> int:
    value = os.environ.get(MAX_PARALLEL_ENV, "1")
    try:
        return max(1, int(value))
    except ValueError:
        log.warning("ignoring %s=%r: not a whole number; running one job at a time", MAX_PARALLEL_ENV, value)
        return 1

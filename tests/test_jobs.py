"""The background job runner: queueing, stop requests, failures and the run status read from disk."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from tlapp.errors import TlappError
from tlapp.events import Done, Message, Progress, Stopped, to_dict
from tlapp.jobs import INTERNAL_ERROR, JobManager, run_status
from tlapp.runs import read_events

TIMEOUT = 10


def gated_work(gate: threading.Event, run_dir: str = "run"):
    """Return work that yields one message, waits for ``gate``, then finishes."""

    def work(stop: threading.Event):
        yield Message("started")
        while not gate.wait(0.01):
            if stop.is_set():
                yield Stopped(run_dir, None)
                return
        yield Done(run_dir, {"val_accuracy": 1.0})

    return work


def test_job_runs_and_records_events(tmp_path):
    manager = JobManager()
    gate = threading.Event()
    gate.set()
    job = manager.submit("train", tmp_path, gated_work(gate), owner="ws1")

    assert manager.wait(job, TIMEOUT)
    assert job.status == "done"
    assert [event.kind for event in job.events] == ["message", "done"]
    assert job.final_event == Done("run", {"val_accuracy": 1.0})
    assert manager.get(job.id) is job
    assert manager.jobs(owner="ws1") == [job]
    assert manager.jobs(owner="someone else") == []


def test_events_since_returns_only_new_events(tmp_path):
    manager = JobManager()
    gate = threading.Event()
    job = manager.submit("train", tmp_path, gated_work(gate))
    while not job.events:
        threading.Event().wait(0.01)

    first = job.events_since(0)
    assert [event.kind for event in first] == ["message"]
    assert job.events_since(len(first)) == []
    gate.set()
    assert manager.wait(job, TIMEOUT)
    assert [event.kind for event in job.events_since(len(first))] == ["done"]


def test_queue_runs_one_job_at_a_time(tmp_path):
    manager = JobManager(max_parallel=1)
    gates = [threading.Event() for _ in range(3)]
    jobs = [manager.submit("train", tmp_path / str(i), gated_work(gate)) for i, gate in enumerate(gates)]

    assert jobs[0].status == "running"
    assert [job.status for job in jobs[1:]] == ["queued", "queued"]
    assert jobs[0].queue_position is None
    assert [job.queue_position for job in jobs[1:]] == [1, 2]

    gates[0].set()
    assert manager.wait(jobs[0], TIMEOUT)
    assert manager.active(tmp_path / "1") is jobs[1]
    while jobs[1].status != "running":
        threading.Event().wait(0.01)
    assert jobs[2].queue_position == 1

    for gate in gates[1:]:
        gate.set()
    assert all(manager.wait(job, TIMEOUT) for job in jobs)
    assert [job.status for job in jobs] == ["done", "done", "done"]
    assert manager.active(tmp_path / "2") is None


def test_max_parallel_two_runs_two_jobs(tmp_path):
    manager = JobManager(max_parallel=2)
    gate = threading.Event()
    jobs = [manager.submit("train", tmp_path / str(i), gated_work(gate)) for i in range(3)]
    assert [job.status for job in jobs] == ["running", "running", "queued"]
    gate.set()
    assert all(manager.wait(job, TIMEOUT) for job in jobs)


def test_stop_running_job_ends_stopped(tmp_path):
    manager = JobManager()
    job = manager.submit("train", tmp_path, gated_work(threading.Event()))
    job.stop()
    assert manager.wait(job, TIMEOUT)
    assert job.status == "stopped"
    assert job.events[-1].kind == "stopped"


def test_stop_queued_job_never_starts_it(tmp_path):
    manager = JobManager()
    first_gate = threading.Event()
    first = manager.submit("train", tmp_path / "a", gated_work(first_gate))
    started = threading.Event()

    def never(stop):
        started.set()
        yield Done("b", {})

    second = manager.submit("train", tmp_path / "b", never)
    second.stop()
    assert second.status == "stopped"
    assert second.queue_position is None
    first_gate.set()
    assert manager.wait(first, TIMEOUT)
    assert not started.is_set()


def test_tlapp_error_becomes_failed_event(tmp_path):
    def work(stop):
        yield Progress("features", 1, 10, 0.1)
        raise TlappError("Class 'circle' is the only class.", "Add a second class.")

    manager = JobManager()
    job = manager.submit("train", tmp_path, work)
    assert manager.wait(job, TIMEOUT)
    assert job.status == "failed"
    failed = job.events[-1]
    assert failed.kind == "failed"
    assert failed.message == "Class 'circle' is the only class."
    assert failed.hint == "Add a second class."


def test_unexpected_error_is_logged_not_shown(tmp_path, caplog):
    def work(stop):
        raise ZeroDivisionError("secret internals")
        yield  # makes this a generator

    manager = JobManager()
    with caplog.at_level(logging.ERROR, logger="tlapp.jobs"):
        job = manager.submit("train", tmp_path, work)
        assert manager.wait(job, TIMEOUT)
    assert job.status == "failed"
    assert job.events[-1] == INTERNAL_ERROR
    assert "secret internals" not in job.events[-1].message
    assert any(record.exc_info and record.exc_info[0] is ZeroDivisionError for record in caplog.records)


def test_failure_is_written_to_run_folder(tmp_path):
    def work(stop):
        with open(tmp_path / "events.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(to_dict(Message("started"))) + "\n")
        yield Message("started")
        raise TlappError("Out of disk space.", "Free some space.")

    manager = JobManager()
    job = manager.submit("train", tmp_path, work)
    assert manager.wait(job, TIMEOUT)
    on_disk = read_events(tmp_path)
    assert [event.kind for event in on_disk] == ["message", "failed"]
    assert run_status(tmp_path, JobManager()) == "failed"


def test_run_without_final_event_is_interrupted(tmp_path):
    (tmp_path / "events.jsonl").write_text(json.dumps(to_dict(Message("started"))) + "\n", encoding="utf-8")
    assert run_status(tmp_path, JobManager()) == "interrupted"


def test_run_status_prefers_the_live_job(tmp_path):
    manager = JobManager()
    gate = threading.Event()
    job = manager.submit("train", tmp_path, gated_work(gate))
    assert run_status(tmp_path, manager) == "running"
    gate.set()
    assert manager.wait(job, TIMEOUT)
    assert run_status(tmp_path, manager) == "done"


def test_max_parallel_below_one_rejected():
    with pytest.raises(ValueError):
        JobManager(max_parallel=0)

"""The job queue in front of the single model worker.

These tests use the FakeBackend stand-in (tests/serve/conftest.py) instead of the real Generator:
what is tested is ordering, bounding, switching, interrupting and shutdown, where real sampling
time would only slow the tests down; the real Generator runs behind the same queue in test_api.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait
from pathlib import Path
from types import SimpleNamespace

import pytest

from animegen.serve.catalog import CheckpointEntry
from animegen.serve.jobs import JobQueue, QueueFullError, ServerClosedError

A = CheckpointEntry("model-a", Path("/models/a"))
B = CheckpointEntry("model-b", Path("/models/b"))


def req(prompt: str):
    return SimpleNamespace(prompt=prompt, seed=0)


def _until(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def gated(fake_backend_cls):
    gate = threading.Event()
    backend = fake_backend_cls(gate=gate, steps=4)
    backend.load(A)
    queues = []

    def make(max_queue=8):
        q = JobQueue(backend, A, max_queue)
        queues.append(q)
        return q

    yield SimpleNamespace(gate=gate, backend=backend, make=make)
    gate.set()
    for q in queues:
        q.close()


def test_jobs_run_first_in_first_out(gated):
    q = gated.make()
    futures = [q.generate(req(f"p{i}")) for i in range(6)]
    gated.gate.set()
    done, _ = wait(futures, timeout=10)
    assert len(done) == 6
    assert [f.result().images[0].infotext for f in futures] == [f"p{i}" for i in range(6)]
    assert [prompt for prompt, _ in gated.backend.ran] == [f"p{i}" for i in range(6)]


def test_full_queue_refuses_and_keeps_the_accepted_jobs(gated):
    q = gated.make(max_queue=2)
    running = q.generate(req("running"))
    _until(gated.backend.started.is_set)  # the first job has left the queue
    waiting = [q.generate(req("w1")), q.generate(req("w2"))]
    with pytest.raises(QueueFullError, match="full"):
        q.generate(req("refused"))
    gated.gate.set()
    assert [f.result(10).images[0].infotext for f in [running, *waiting]] == ["running", "w1", "w2"]
    assert "refused" not in [p for p, _ in gated.backend.ran]


def test_progress_and_interrupt_of_the_running_job(gated):
    q = gated.make()
    assert q.interrupt() is False  # nothing running
    first = q.generate(req("long"))
    second = q.generate(req("next"))
    _until(lambda: q.snapshot().sampling_step == 1)
    snap = q.snapshot()
    assert (snap.sampling_step, snap.sampling_steps, snap.job_count, snap.queued) == (1, 4, 2, 1)
    assert snap.progress == pytest.approx(0.25)
    assert q.interrupt() is True
    result = first.result(10)
    assert result.interrupted and result.images == []
    gated.gate.set()
    assert second.result(10).images[0].infotext == "next"  # the interrupt only hit the running job


def test_model_switch_happens_between_jobs(gated):
    q = gated.make()
    before = q.generate(req("before"))
    switched = q.switch_model(B)
    after = q.generate(req("after"))
    override = q.generate(req("override"), model=A)  # per-request override, restored afterwards
    restored = q.generate(req("restored"))
    gated.gate.set()
    wait([before, switched, after, override, restored], timeout=10)
    assert switched.result() == B and q.selected == B
    assert gated.backend.ran == [("before", "model-a"), ("after", "model-b"), ("override", "model-a"),
                                 ("restored", "model-b")]


def test_a_failing_job_only_fails_its_own_request(gated):
    q = gated.make()
    gated.gate.set()
    bad, good = q.generate(req("fail")), q.generate(req("fine"))
    with pytest.raises(RuntimeError, match="on purpose"):
        bad.result(10)
    assert good.result(10).images[0].infotext == "fine"


def test_close_answers_waiting_jobs_exactly_once(gated):
    q = gated.make()
    running = q.generate(req("running"))
    _until(gated.backend.started.is_set)
    waiting = [q.generate(req(f"w{i}")) for i in range(3)]
    q.close()  # interrupts the running job, fails the waiting ones
    assert running.result(10).interrupted
    for f in waiting:
        with pytest.raises(ServerClosedError):
            f.result(10)
    with pytest.raises(ServerClosedError):
        q.generate(req("late"))

"""The event batcher: batches off the request path, spills what the sink refuses, replays it, loses nothing."""

import os
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from models.events import PredictionEvent
from serving.batcher import EventBatcher, JournalError, SpillDir
from serving.sinks import SinkError, encode_lines
from tests.serving.helpers import wait_for


class MemorySink:
    """Records delivered batches; ``down`` makes it refuse writes like an unreachable stream. Like every
    sink, it encodes the whole batch before taking any of it."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.down = False
        self.closed = False
        self.lock = threading.Lock()

    def write(self, events):
        if self.down:
            raise SinkError("stream unreachable")
        encode_lines(events)
        with self.lock:
            self.batches.append(list(events))

    def close(self):
        self.closed = True

    @property
    def events(self):
        return [e for batch in self.batches for e in batch]


def event(i: int) -> PredictionEvent:
    return PredictionEvent(event_id=f"e{i}", ts=datetime(2026, 1, 5, 12, tzinfo=timezone.utc), request_id=f"r{i}",
                           partner_id="p", app_id=f"app-{i}", model_version=1, arm="champion",
                           neighbors=["x"], scores=[0.5])


def make(sink, tmp_path, **kwargs):
    options = dict(max_queue=1000, max_batch=50, flush_seconds=0.05, replay_seconds=0.05) | kwargs
    return EventBatcher(sink, SpillDir(tmp_path / "spill"), **options)


def test_events_are_delivered_in_batches_as_json(tmp_path):
    sink = MemorySink()
    batcher = make(sink, tmp_path).start()
    for i in range(120):
        assert batcher.submit(event(i))
    batcher.close()
    assert [e["event_id"] for e in sink.events] == [f"e{i}" for i in range(120)]
    assert sink.events[0]["ts"] == "2026-01-05T12:00:00.000000Z"  # Event.to_json_dict, done on the batcher thread
    assert max(len(b) for b in sink.batches) <= 50
    assert sink.closed and batcher.stats.written == 120


def test_close_flushes_everything_still_queued(tmp_path):
    sink = MemorySink()
    # A long flush interval: without close() these events would still be waiting for their batch.
    batcher = make(sink, tmp_path, flush_seconds=60, max_batch=10_000).start()
    for i in range(300):
        batcher.submit(event(i))
    batcher.close()
    assert len(sink.events) == 300


def test_a_full_batch_is_delivered_without_waiting_for_the_flush_interval(tmp_path):
    sink = MemorySink()
    batcher = make(sink, tmp_path, flush_seconds=60, max_batch=25).start()
    for i in range(60):
        batcher.submit(event(i))
    wait_for(lambda: len(sink.events) >= 50, timeout=10)  # two full batches, long before 60 s
    assert all(len(b) == 25 for b in sink.batches[:2])
    batcher.close()
    assert [e["event_id"] for e in sink.events] == [f"e{i}" for i in range(60)]


def test_sink_down_spills_then_replays_when_it_recovers(tmp_path):
    sink = MemorySink()
    sink.down = True
    batcher = make(sink, tmp_path).start()
    for i in range(40):
        batcher.submit(event(i))
    spill = SpillDir(tmp_path / "spill")
    wait_for(lambda: batcher.stats.spilled == 40)
    assert spill.pending() and not sink.events
    sink.down = False
    for i in range(40, 50):
        batcher.submit(event(i))
    batcher.close()
    assert sorted(e["event_id"] for e in sink.events) == sorted(f"e{i}" for i in range(50))
    assert not spill.pending()
    assert batcher.stats.replayed == 40 and batcher.stats.lost == 0


def test_spill_left_by_a_previous_process_is_replayed_at_start(tmp_path):
    down = MemorySink()
    down.down = True
    first = make(down, tmp_path, flush_seconds=60).start()
    for i in range(25):
        first.submit(event(i))
    first.close()  # shutdown while the sink is down: everything goes to the spill folder
    assert first.stats.spilled == 25 and SpillDir(tmp_path / "spill").pending()
    sink = MemorySink()
    second = make(sink, tmp_path).start()
    second.close()
    assert sorted(e["event_id"] for e in sink.events) == sorted(f"e{i}" for i in range(25))


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    batcher = make(MemorySink(), tmp_path, max_queue=5)  # not started: nothing drains the queue
    accepted = [batcher.submit(event(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert batcher.stats.dropped == 3 and batcher.depth == 5
    assert batcher.stats.submitted == 5  # a dropped event was never submitted


def test_a_spilled_batch_is_claimed_by_one_replayer_only(tmp_path):
    spill = SpillDir(tmp_path)
    path = spill.write([b'{"event_id":"a"}\n'])
    claimed = spill.claim(path)
    assert claimed is not None and spill.claim(path) is None
    assert spill.pending() == []
    spill.release(claimed)
    assert spill.pending() == [path] and spill.read(path) == [{"event_id": "a"}]


def test_unwritable_spill_counts_events_as_lost(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    sink = MemorySink()
    sink.down = True
    batcher = EventBatcher(sink, SpillDir(blocker / "spill"), flush_seconds=0.01)
    batcher.submit(event(1))
    batcher.close()
    assert batcher.stats.lost == 1


@pytest.mark.parametrize("count", [0, 1])
def test_close_is_idempotent(tmp_path, count):
    sink = MemorySink()
    batcher = make(sink, tmp_path).start()
    for i in range(count):
        batcher.submit(event(i))
    batcher.close()
    batcher.close()
    assert len(sink.events) == count
    assert not batcher.submit(event(9))  # after close nothing is accepted silently


# --- the logging path cannot die ----------------------------------------------------------------
def balanced(stats) -> bool:
    """The counting invariant, once the queue is empty."""
    return stats.submitted == stats.written + stats.spilled + stats.rejected + stats.lost


def unencodable(i: int) -> dict:
    # What once killed the thread: a lone surrogate that no UTF-8 writer can encode, slipped in below the edge.
    return event(i).to_json_dict() | {"partner_id": "\ud800"}


def test_an_unencodable_event_is_rejected_alone_and_the_batcher_goes_on(tmp_path):
    sink = MemorySink()
    batcher = make(sink, tmp_path).start()
    for i in range(10):
        batcher.submit(unencodable(i) if i == 4 else event(i))
    wait_for(lambda: batcher.stats.written == 9)
    for i in range(10, 20):  # the thread is still alive and delivering
        batcher.submit(event(i))
    wait_for(lambda: batcher.stats.written == 19)
    assert batcher.stall_reason() is None
    batcher.close()
    assert sorted(e["event_id"] for e in sink.events) == sorted(f"e{i}" for i in range(20) if i != 4)
    assert batcher.stats.rejected == 1 and batcher.stats.submitted == 20 and balanced(batcher.stats)


def test_an_unencodable_event_is_rejected_alone_when_the_sink_is_down_too(tmp_path):
    sink = MemorySink()
    sink.down = True
    batcher = make(sink, tmp_path).start()
    batcher.submit(event(1))
    batcher.submit(unencodable(2))
    batcher.submit(event(3))
    wait_for(lambda: batcher.stats.spilled == 2)
    assert batcher.stats.rejected == 1 and balanced(batcher.stats)
    sink.down = False
    batcher.close()
    assert sorted(e["event_id"] for e in sink.events) == ["e1", "e3"]


class BuggySink(MemorySink):
    """Fails with something that is not a SinkError (a bug in a sink), then works."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def write(self, events):
        if self.failures:
            self.failures -= 1
            raise KeyError("a bug in the sink")
        super().write(events)


def test_a_sink_bug_spills_the_batch_and_it_is_replayed(tmp_path):
    sink = BuggySink(failures=1)
    batcher = make(sink, tmp_path).start()
    for i in range(5):
        batcher.submit(event(i))
    batcher.close()
    assert batcher.stats.spilled == 5 and batcher.stats.replayed == 5 and batcher.stats.rejected == 0
    assert sorted(e["event_id"] for e in sink.events) == [f"e{i}" for i in range(5)]


def test_an_error_in_the_loop_is_counted_and_the_loop_goes_on(tmp_path, monkeypatch):
    sink = MemorySink()
    batcher = make(sink, tmp_path)
    recover = batcher.spill.recover
    calls = []

    def fails_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("spill folder listing failed")
        return recover(**kwargs)

    monkeypatch.setattr(batcher.spill, "recover", fails_once)
    batcher.start()
    wait_for(lambda: batcher.stats.loop_errors == 1)
    batcher.submit(event(1))
    wait_for(lambda: sink.events)
    batcher.close()
    assert batcher.stats.written == 1


class HangingSink(MemorySink):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def write(self, events):
        self.release.wait(30)
        super().write(events)


def test_watchdog_reports_a_hanging_sink_until_it_comes_back(tmp_path):
    sink = HangingSink()
    batcher = make(sink, tmp_path, stall_seconds=0.2).start()
    batcher.submit(event(1))
    reason = wait_for(batcher.stall_reason, timeout=10)
    assert "no progress" in reason and "HangingSink" in reason
    sink.release.set()
    wait_for(lambda: batcher.stall_reason() is None, timeout=10)
    batcher.close()
    assert len(sink.events) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread ends on purpose
def test_watchdog_reports_a_batcher_thread_that_stopped(tmp_path, monkeypatch):
    batcher = make(MemorySink(), tmp_path)

    def dies(*args):
        raise SystemExit  # not an Exception: the one way left to end the thread
    monkeypatch.setattr(batcher, "_cycle", dies)
    batcher.start()
    reason = wait_for(batcher.stall_reason, timeout=10)
    assert "thread has stopped" in reason


# --- the feedback journal ------------------------------------------------------------------
def lines(prefix: str, n: int) -> list[bytes]:
    return [f'{{"event_id":"{prefix}{i}"}}\n'.encode() for i in range(n)]


class SlowSpill(SpillDir):
    """Holds the first write until released, so that more requests queue up behind it."""

    def __init__(self, folder):
        super().__init__(folder)
        self.first = threading.Event()
        self.release = threading.Event()
        self.writes = 0

    def write(self, lines):
        self.writes += 1
        if self.writes == 1:
            self.first.set()
            self.release.wait(10)
        return super().write(lines)


def test_journal_group_commit_shares_one_write_among_concurrent_requests(tmp_path):
    sink = MemorySink()
    spill = SlowSpill(tmp_path / "spill")
    batcher = EventBatcher(sink, spill, flush_seconds=0.05).start()
    futures = [batcher.journal.append(lines("a", 2))]
    spill.first.wait(10)
    futures += [batcher.journal.append(lines(f"r{n}-", 3)) for n in range(20)]  # all wait for the next commit
    assert not any(future.done() for future in futures)  # nothing acknowledged before its write
    spill.release.set()
    for future in futures:
        future.result(timeout=10)
    assert spill.writes == 2 and batcher.stats.journal_commits == 2
    batcher.close()
    assert sorted(e["event_id"] for e in sink.events) == sorted(["a0", "a1"] + [f"r{n}-{i}" for n in range(20) for i in range(3)])
    assert batcher.stats.submitted == batcher.stats.spilled == batcher.stats.replayed == 62
    assert spill.backlog() == 0


def test_journal_files_are_forwarded_to_the_sink_and_removed_after_it_took_them(tmp_path):
    sink = MemorySink()
    sink.down = True
    batcher = make(sink, tmp_path, replay_seconds=0.05).start()
    batcher.journal.append(lines("f", 4)).result(timeout=10)
    spill = SpillDir(tmp_path / "spill")
    assert spill.backlog() == 1  # durable, waiting for the sink
    sink.down = False
    wait_for(lambda: len(sink.events) == 4)
    wait_for(lambda: spill.backlog() == 0)
    batcher.journal.append(lines("g", 2)).result(timeout=10)
    wait_for(lambda: len(sink.events) == 6, timeout=5)  # forwarded right after the commit
    batcher.close()
    assert batcher.stats.replayed == 6 and balanced(batcher.stats)


def test_journal_write_failure_is_never_acknowledged(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    batcher = EventBatcher(MemorySink(), SpillDir(blocker / "spill"), flush_seconds=0.05).start()
    with pytest.raises(JournalError, match="cannot write 1 events"):
        batcher.journal.append(lines("x", 1)).result(timeout=10)
    assert batcher.stats.submitted == 0
    batcher.close()


# --- claims left by a dead process ---------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def claimed_by_dead_process(folder: Path, ids: list[str]) -> Path:
    """What a replay killed between claim and delete leaves behind."""
    path = SpillDir(folder.with_name("staging")).write([f'{{"event_id":"{i}"}}\n'.encode() for i in ids])
    folder.mkdir(exist_ok=True)
    return path.rename(folder / f".claimed-{dead_pid()}-{path.name}")


def test_claims_of_a_dead_process_are_replayed_at_start_and_counted_in_the_backlog(tmp_path):
    claimed = claimed_by_dead_process(tmp_path / "spill", ["c1", "c2"])
    assert SpillDir(tmp_path / "spill").backlog() == 1
    sink = MemorySink()
    batcher = make(sink, tmp_path).start()
    wait_for(lambda: len(sink.events) == 2)
    batcher.close()
    assert not claimed.exists() and SpillDir(tmp_path / "spill").backlog() == 0


def test_a_live_process_replays_claims_whose_claimer_died(tmp_path):
    sink = MemorySink()
    batcher = make(sink, tmp_path, replay_seconds=0.05).start()
    claimed_by_dead_process(tmp_path / "spill", ["late"])
    wait_for(lambda: [e["event_id"] for e in sink.events] == ["late"])
    batcher.close()


def test_claims_of_a_live_process_are_left_alone(tmp_path):
    path = SpillDir(tmp_path).write(lines("x", 1))
    live = path.with_name(f".claimed-{os.getppid()}-{path.name}")
    path.rename(live)
    assert SpillDir(tmp_path).recover() == 0 and live.exists()


def test_an_unreadable_spill_file_is_quarantined_and_replay_goes_on(tmp_path):
    spill = SpillDir(tmp_path / "spill")
    bad = spill.write([b'{"event_id": "tr\n'])
    spill.write(lines("ok", 2))
    sink = MemorySink()
    batcher = make(sink, tmp_path).start()
    wait_for(lambda: len(sink.events) == 2)
    batcher.close()
    quarantined = tmp_path / "spill" / "quarantine" / bad.name
    assert quarantined.exists() and "unreadable" in quarantined.with_name(bad.name + ".reason").read_text()
    assert batcher.stats.quarantined_files == 1


def test_backlog_counts_a_file_once_while_a_replay_claims_and_returns_it(tmp_path):
    """A replay renames a file to its claim and back (sink down) while /metrics counts the backlog: counted from two
    listings, a file moving between them was seen twice or not at all."""
    spill = SpillDir(tmp_path / "spill")
    waiting = spill.write([b'{"event_id": "x"}\n'])
    claimed = waiting.with_name(f".claimed-{os.getpid()}-{waiting.name}")
    stop = threading.Event()

    def claim_and_return():
        while not stop.is_set():
            os.rename(waiting, claimed)
            os.rename(claimed, waiting)

    mover = threading.Thread(target=claim_and_return)
    mover.start()
    try:
        counts = {spill.backlog() for _ in range(3000)}
    finally:
        stop.set()
        mover.join()
    assert counts == {1}

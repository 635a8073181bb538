"""The event batcher: batches off the request path, spills what the sink refuses, replays it, loses nothing."""

import threading
from datetime import datetime, timezone

import pytest

from models.events import PredictionEvent
from serving.batcher import EventBatcher, SpillDir
from serving.sinks import SinkError
from tests.serving.helpers import wait_for


class MemorySink:
    """Records delivered batches; ``down`` makes it refuse writes like an unreachable stream."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.down = False
        self.closed = False
        self.lock = threading.Lock()

    def write(self, events):
        if self.down:
            raise SinkError("stream unreachable")
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
    assert not batcher.has_room(1)


def test_a_spilled_batch_is_claimed_by_one_replayer_only(tmp_path):
    spill = SpillDir(tmp_path)
    path = spill.write([{"event_id": "a"}])
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

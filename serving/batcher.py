"""The logging path: requests hand events over, background threads make them durable and deliver them.

Two kinds of events, two guarantees:

- **Prediction events** (one per answer, acknowledged to no one): ``submit`` appends to a bounded
  deque, and the batcher's thread delivers them in batches, off the response path. A full queue
  drops and counts. A kill -9 loses what is still queued: at most ``flush_seconds`` of answers
  (README, "Reliability").
- **Feedback events** (a partner's clicks and conversions, answered 202): the handler waits for
  ``FeedbackJournal.append``, a group commit that writes the events to a local file and fsyncs it,
  so the 202 means the events are on disk. Concurrent requests share one write and one fsync. The
  journal files sit in the spill folder, and the batcher forwards them to the sink and deletes them
  only once the sink took them.

The spill folder holds every event that is on local disk but not yet in the sink: the journal, and
prediction batches the sink refused. It is replayed oldest first, at start (including files a
killed process had claimed) and whenever the sink takes writes.

Nothing stops the logging thread: an event that cannot be encoded is rejected and counted on its
own, a sink or replay failure is spilled or retried, and any other exception is counted and the
loop goes on. Counts hold: ``submitted = written + spilled + rejected + lost + queued`` (``lost``
only when the local disk refuses a spill). ``stall_reason`` is the watchdog: a thread that died or
a delivery that has not come back for ``stall_seconds`` turns /ping into a 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import orjson
from pydantic import BaseModel

from models.processes import pid_alive
from serving.sinks import FeedbackSink, SinkError, encode_line

log = logging.getLogger("appsim.serving.batcher")

SPILL_PREFIX = "spill-"
SPILL_SUFFIX = ".jsonl"
CLAIM_PREFIX = ".claimed-"
TMP_PREFIX = ".tmp-"
QUARANTINE = "quarantine"
REJECTED_REPR_CHARS = 300  # of a rejected event, in the log line that records it


class SpillError(RuntimeError):
    """The local spill folder cannot be written: events would be lost."""


class JournalError(RuntimeError):
    """Feedback events could not be made durable: the request must not be acknowledged."""


def _owner_pid(name: str) -> int | None:
    """The pid in ``.claimed-<pid>-...`` / ``.tmp-<pid>-...``; None for a name not in that form."""
    parts = name.split("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


class SpillDir:
    """Event files on local disk waiting for the sink, one JSON-lines file per batch, replayed oldest first.

    A file appears atomically (written under a temporary name, fsynced, renamed, the folder
    fsynced), so a file with the final name is complete and survives a crash of the process or of
    the machine. Several worker processes share the folder: a file is claimed by renaming it to
    ``.claimed-<pid>-<name>`` before replay, so two workers never replay the same batch; claims of
    a process that died are handed back by ``recover``.
    """

    def __init__(self, folder: str | os.PathLike, *, fsync: bool = True):
        self.folder = Path(folder)
        self.fsync = fsync

    def write(self, lines: Sequence[bytes]) -> Path:
        """One file holding ``lines`` (each a JSON object ending in a newline), durable on return."""
        name = f"{SPILL_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SPILL_SUFFIX}"
        tmp = self.folder / f"{TMP_PREFIX}{os.getpid()}-{name}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                out.write(b"".join(lines))
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, self.folder / name)
            if self.fsync:  # the rename itself is durable only once the folder is synced
                folder = os.open(self.folder, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError as error:
            raise SpillError(f"cannot write {len(lines)} events to {self.folder}: {error}; "
                             "free disk space or set APPSIM_SPILL_DIR to a writable folder") from error
        return self.folder / name

    def pending(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{SPILL_PREFIX}*{SPILL_SUFFIX}"))

    def claimed(self) -> list[Path]:
        return sorted(self.folder.glob(f"{CLAIM_PREFIX}*")) if self.folder.is_dir() else []

    def backlog(self) -> int:
        """Files waiting for the sink, including the ones a replay holds right now.

        One listing: a replay renames a file to its claim and back, so counting pending and claimed files from two
        listings saw a file that moved between them twice or not at all."""
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        return sum(name.startswith(CLAIM_PREFIX) or (name.startswith(SPILL_PREFIX) and name.endswith(SPILL_SUFFIX))
                   for name in names)

    def claim(self, path: Path) -> Path | None:
        claimed = path.with_name(f"{CLAIM_PREFIX}{os.getpid()}-{path.name}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:  # another worker took it
            return None
        return claimed

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The events of a file; ValueError (orjson's) on a line that is not JSON."""
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

    @staticmethod
    def release(claimed: Path) -> None:
        """Give a claimed file back (the sink is still down, or its claimer died)."""
        os.rename(claimed, claimed.with_name(claimed.name.split("-", 2)[2]))

    def recover(self, *, own_claims: bool = False) -> int:
        """Hand back the claims of dead processes (and ours with ``own_claims``: at start, a claim with our
        pid is a dead predecessor's, pids repeat in containers); delete their half-written files. Returns
        how many claims were handed back."""
        if not self.folder.is_dir():
            return 0
        me = os.getpid()

        def dead(path: Path) -> bool:
            pid = _owner_pid(path.name)
            return pid is not None and pid != me and not pid_alive(pid)

        recovered = 0
        for path in self.claimed():
            if not (dead(path) or (own_claims and _owner_pid(path.name) == me)):
                continue
            try:
                self.release(path)
                recovered += 1
            except FileNotFoundError:  # another live worker recovered it first
                continue
        for path in filter(dead, self.folder.glob(f"{TMP_PREFIX}*")):
            path.unlink(missing_ok=True)  # never acknowledged: the request that wrote it got no 2xx
        return recovered

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move an unreadable file aside, with its reason beside it, so replay can go on."""
        folder = self.folder / QUARANTINE
        folder.mkdir(exist_ok=True)
        target = folder / path.name.split("-", 2)[2] if path.name.startswith(CLAIM_PREFIX) else folder / path.name
        os.replace(path, target)
        target.with_name(target.name + ".reason").write_text(reason + "\n")
        return target


@dataclass
class BatcherStats:
    """Event counts. Each field is written by one thread only (no lock on the request path):
    ``queued`` by requests, ``journaled`` by the journal, the rest by the batcher."""

    queued: int = 0  # prediction events accepted into the queue
    journaled: int = 0  # feedback events made durable by the journal
    dropped: int = 0  # refused because the queue was full (never submitted)
    written: int = 0  # delivered to the sink straight from the queue
    refused_spilled: int = 0  # batches the sink refused, kept in the spill folder
    rejected: int = 0  # events that cannot be encoded as JSON
    lost: int = 0  # the sink refused them and the spill folder could not be written
    replayed: int = 0  # events forwarded from the spill folder to the sink
    sink_errors: int = 0
    loop_errors: int = 0  # unexpected exceptions in the batcher loop (counted, the loop goes on)
    quarantined_files: int = 0  # spill files that could not be read back
    journal_commits: int = 0  # fsyncs of the journal (each shared by the requests waiting then)

    @property
    def submitted(self) -> int:
        return self.queued + self.journaled

    @property
    def spilled(self) -> int:
        """Events kept on local disk for the sink: the feedback journal and refused batches."""
        return self.journaled + self.refused_spilled


class FeedbackJournal:
    """Group commit: ``append`` returns a future that completes once the events are in a durable file.

    Requests that arrive while a commit is running wait for the next one and share its write and
    fsync, so under load the cost of an fsync is spread over many requests.
    """

    def __init__(self, spill: SpillDir, stats: BatcherStats, on_commit: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic):
        self.spill = spill
        self.stats = stats
        self.on_commit = on_commit
        self.clock = clock
        self._cond = threading.Condition()
        self._waiting: list[tuple[Sequence[bytes], concurrent.futures.Future]] = []
        self._closed = False
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="appsim-feedback-journal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def append(self, lines: Sequence[bytes]) -> concurrent.futures.Future:
        """Queue encoded events (JSON lines) for the next commit; the future raises ``JournalError`` on failure."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise JournalError("the server is shutting down; send the events again to another instance")
            self._waiting.append((lines, future))
            self._cond.notify()
        return future

    async def commit(self, lines: Sequence[bytes], timeout: float) -> None:
        """Wait (without blocking the event loop) until ``lines`` are durable, or raise ``JournalError``."""
        future = self.append(lines)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise JournalError(f"the local journal did not confirm the write within {timeout:g}s "
                               f"(disk slow or full at {self.spill.folder})") from None

    def busy_for(self) -> float:
        """Seconds the current commit has been running (0 when idle): the watchdog's view."""
        started = self._busy_since
        return 0.0 if started is None else self.clock() - started

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is waiting, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                waiting, self._waiting = self._waiting, []
            # A request that gave up waiting (timeout: it answered 503) cancelled its future: not acknowledged,
            # not written. Once running, a future cannot be cancelled, so its result can always be set.
            group = [(lines, future) for lines, future in waiting if future.set_running_or_notify_cancel()]
            try:
                self._commit(group)
            except Exception:  # a bug must not stop the journal; the group's requests get a 503 and retry
                log.exception("feedback journal commit failed")
                for _, future in group:
                    if not future.done():
                        future.set_exception(JournalError("internal error in the feedback journal"))

    def _commit(self, group: list[tuple[Sequence[bytes], concurrent.futures.Future]]) -> None:
        lines = [line for request_lines, _ in group for line in request_lines]
        if not lines:
            return
        self._busy_since = self.clock()
        try:
            self.spill.write(lines)
        except Exception as error:  # SpillError, or anything else: no request of this group is acknowledged
            log.error("feedback journal write failed for %d events: %s", len(lines), error)
            failure = error if isinstance(error, SpillError) else SpillError(f"{type(error).__name__}: {error}")
            for _, future in group:
                future.set_exception(JournalError(str(failure)))
            return
        finally:
            self._busy_since = None
        self.stats.journaled += len(lines)
        self.stats.journal_commits += 1
        for _, future in group:
            future.set_result(None)
        try:
            self.on_commit()
        except Exception:  # the sink forwarding is the batcher's business; the events are safe on disk
            log.exception("could not wake the batcher after a journal commit")


class EventBatcher:
    """Requests append to a deque (atomic under the GIL: no lock, no thread wake-up per event);
    the delivery thread wakes every ``flush_seconds``, as soon as a full batch is waiting, or when
    the journal committed feedback.

    A ``queue.Queue`` here cost a fifth of a /similar request's CPU: every put notified the
    waiting thread, which took the GIL from the event loop once per event.
    """

    def __init__(self, sink: FeedbackSink, spill: SpillDir, *, max_queue: int = 10_000, max_batch: int = 500,
                 flush_seconds: float = 1.0, replay_seconds: float = 10.0, stall_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.spill = spill
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.flush_seconds = flush_seconds
        self.replay_seconds = replay_seconds
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.stats = BatcherStats()
        self.journal = FeedbackJournal(spill, self.stats, self._journal_committed, clock)
        self._pending: deque = deque()
        self._wake = threading.Event()
        self._forward = False  # the journal committed: forward its file to the sink now
        self._sink_ok = True
        self._closed = False
        self._started = False
        self._heartbeat = clock()
        self._stall_logged = False
        self._thread = threading.Thread(target=self._run, name="appsim-event-batcher", daemon=True)

    # -- request side ------------------------------------------------------------------
    def start(self) -> "EventBatcher":
        self._started = True
        self._heartbeat = self.clock()
        self._thread.start()
        self.journal.start()
        return self

    def submit(self, event: BaseModel | dict) -> bool:
        """Queue one event (an Event model or a JSON-ready dict); False when it was dropped."""
        if self._closed or len(self._pending) >= self.max_queue:
            self.stats.dropped += 1
            return False
        self._pending.append(event)
        self.stats.queued += 1
        if len(self._pending) >= self.max_batch and not self._wake.is_set():
            self._wake.set()
        return True

    @property
    def depth(self) -> int:
        return len(self._pending)

    def stall_reason(self) -> str | None:
        """Why events are not flowing (the watchdog behind /ping and a metric), or None when they are."""
        reason = None
        if self._started and not self._closed:
            idle = self.clock() - self._heartbeat
            if not self._thread.is_alive():
                reason = "the event batcher thread has stopped; restart the server (queued events are not logged)"
            elif idle > self.stall_seconds:
                reason = (f"the event batcher has made no progress for {idle:.0f}s with {self.depth} events queued: "
                          f"a sink write is hanging ({type(self.sink).__name__}); check the feedback sink")
            elif self.journal.busy_for() > self.stall_seconds:
                reason = (f"the feedback journal has been writing for {self.journal.busy_for():.0f}s: "
                          f"the local disk at {self.spill.folder} is not answering")
        if reason and not self._stall_logged:
            log.error("event logging stalled: %s", reason)
        self._stall_logged = reason is not None
        return reason

    def close(self, timeout: float = 60.0) -> None:
        """Commit the journal, deliver (or spill) everything queued, try the spill once more, close the sink."""
        if self._closed:
            return
        self.journal.close()
        self._closed = True
        if self._thread.is_alive():
            self._wake.set()
            self._thread.join(timeout)
        # Whatever a request appended while the thread was finishing (or everything, if it never started).
        while self._pending:
            self._deliver(self._take(self.max_batch))
        self.sink.close()

    # -- delivery thread ---------------------------------------------------------------
    def _journal_committed(self) -> None:
        self._forward = True
        self._wake.set()

    def _run(self) -> None:
        next_replay = 0.0  # replay what a previous process spilled, right away
        own_claims = True  # at start, claims carrying our pid are a dead predecessor's
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._closed
            try:
                next_replay = self._cycle(stopping, next_replay, own_claims)
                own_claims = False
            except Exception:  # a bug must not stop event logging: count it, the next cycle retries
                self.stats.loop_errors += 1
                log.exception("event batcher cycle failed; continuing")
            if stopping:
                return

    def _cycle(self, stopping: bool, next_replay: float, own_claims: bool) -> float:
        self._heartbeat = self.clock()
        delivered = False
        while self._pending:
            delivered = self._deliver(self._take(self.max_batch)) or delivered
            self._heartbeat = self.clock()
        forward, self._forward = self._forward, False
        due = stopping or self.clock() >= next_replay
        if due:
            self.spill.recover(own_claims=own_claims)
        if (due or (self._sink_ok and (delivered or forward))) and self.spill.pending():
            self._replay()
            if due or not self._sink_ok:
                next_replay = self.clock() + self.replay_seconds
        return next_replay

    def _take(self, limit: int) -> list:
        batch = []
        while self._pending and len(batch) < limit:
            batch.append(self._pending.popleft())
        return batch

    def _reject(self, event: object, error: Exception) -> None:
        self.stats.rejected += 1
        log.error("event rejected, it cannot be encoded as JSON (%s): %s", error, repr(event)[:REJECTED_REPR_CHARS])

    def _json_ready(self, batch: list) -> list[dict]:
        events = []
        for event in batch:
            try:
                events.append(event.to_json_dict() if isinstance(event, BaseModel) else event)  # type: ignore[attr-defined]
            except Exception as error:
                self._reject(event, error)
        return events

    def _encoded(self, events: list[dict]) -> tuple[list[dict], list[bytes]]:
        """The events that encode, with their JSON lines; the others are rejected (each on its own)."""
        kept, lines = [], []
        for event in events:
            try:
                lines.append(encode_line(event))
            except Exception as error:
                self._reject(event, error)
                continue
            kept.append(event)
        return kept, lines

    def _deliver(self, batch: list) -> bool:
        """Hand a batch to the sink; spill it when the sink refuses. Never raises; True when the sink took it."""
        events = self._json_ready(batch)
        if not events:
            return False
        try:
            self.sink.write(events)
        except Exception as error:
            if not isinstance(error, SinkError):
                # A sink encodes the whole batch before delivering any of it, so an event no sink can take
                # fails here: find it, reject it alone, and deliver the rest.
                encodable, _ = self._encoded(events)
                if len(encodable) < len(events):
                    return self._deliver(encodable)
            self.stats.sink_errors += 1
            self._sink_ok = False
            log.warning("sink refused %d events (%s); spilling them to %s", len(events), error, self.spill.folder)
            self._spill(events)
            return False
        self.stats.written += len(events)
        self._sink_ok = True
        return True

    def _spill(self, events: list[dict]) -> None:
        _, lines = self._encoded(events)
        if not lines:
            return
        try:
            self.spill.write(lines)
            self.stats.refused_spilled += len(lines)
        except SpillError as error:
            self.stats.lost += len(lines)
            log.error("%s", error)

    def _replay(self) -> None:
        """Forward spilled and journaled files to the sink, oldest first, several files per sink write."""
        claimed: list[Path] = []
        events: list[dict] = []
        for path in self.spill.pending():
            mine = self.spill.claim(path)
            if mine is None:
                continue
            try:
                events.extend(self.spill.read(mine))
            except (OSError, ValueError) as error:
                target = self.spill.quarantine(mine, f"unreadable spill file: {error}")
                self.stats.quarantined_files += 1
                log.error("spill file %s cannot be read (%s); moved to %s", path.name, error, target)
                continue
            claimed.append(mine)
            if len(events) >= self.max_batch:
                if not self._forward_files(claimed, events):
                    return
                claimed, events = [], []
        if claimed:
            self._forward_files(claimed, events)

    def _forward_files(self, claimed: list[Path], events: list[dict]) -> bool:
        try:
            self.sink.write(events)
        except Exception as error:
            for path in claimed:
                self.spill.release(path)
            self.stats.sink_errors += 1
            self._sink_ok = False
            log.info("sink still refuses events (%s); %d spilled batches wait", error, len(self.spill.pending()))
            return False
        for path in claimed:  # after the sink took them: a kill -9 before this line replays them again (duplicates)
            path.unlink()
        self.stats.replayed += len(events)
        self._sink_ok = True
        self._heartbeat = self.clock()
        log.info("replayed %d spilled events from %d files", len(events), len(claimed))
        return True

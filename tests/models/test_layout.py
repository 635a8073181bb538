"""The feedback hour folders and the lateness rule: one definition (models/layout.py) for every reader and writer."""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone

from models import layout, storage

T0 = datetime(2026, 3, 1, 10, 30, tzinfo=timezone.utc)


def _deliver(feedback: str, arrival: datetime, name: str) -> str:
    uri = layout.feedback_object_uri(feedback, arrival, name)
    storage.write_bytes(uri, gzip.compress(b"{}\n"))
    return uri


def test_an_object_lands_in_the_utc_hour_of_its_arrival(tmp_path):
    feedback = layout.feedback_uri(storage.normalize(tmp_path))
    paris = timezone(timedelta(hours=1))
    uri = layout.feedback_object_uri(feedback, datetime(2026, 3, 1, 0, 15, tzinfo=paris), "x.gz")
    assert uri == storage.join(feedback, "2026/02/28/23", "x.gz")
    assert layout.feedback_prefix(T0) == "feedback/2026/03/01/10/"


def test_a_window_reads_its_hours_plus_the_delivery_delay_and_never_past_as_of():
    end = T0 + timedelta(hours=3)
    hours = layout.arrival_hours(T0, end)
    assert hours[0] == T0.replace(minute=0) and hours[-1] < end + layout.MAX_DELIVERY_DELAY <= hours[-1] + timedelta(hours=1)
    assert len(hours) == 4 + 24
    as_of = T0 + timedelta(hours=1, minutes=5)  # a decision at 11:35 knows the 10:00 and 11:00 folders only
    assert layout.arrival_hours(T0, end, as_of=as_of) == [T0.replace(minute=0), T0.replace(minute=0) + timedelta(hours=1)]


def test_feedback_files_keeps_the_window_s_hour_folders_and_reports_stray_files(tmp_path):
    feedback = layout.feedback_uri(storage.normalize(tmp_path))
    before = _deliver(feedback, T0 - timedelta(hours=1), "before.gz")
    inside = _deliver(feedback, T0, "inside.gz")
    late = _deliver(feedback, T0 + timedelta(hours=20), "late.gz")        # within the delay: read
    too_late = _deliver(feedback, T0 + timedelta(hours=30), "too-late.gz")  # past end + 24 h: not read
    stray = storage.join(feedback, "2026/03/01", "notes.txt")
    storage.write_bytes(stray, b"not an hour folder")
    found = layout.feedback_files(feedback, T0, T0 + timedelta(hours=1))
    assert found.files == [inside, late] and found.ignored == [stray]
    assert before not in found.files and too_late not in found.files
    assert layout.feedback_files(feedback, T0, T0 + timedelta(hours=1), as_of=T0 + timedelta(hours=2)).files == [inside]


def test_hour_folders_walk_in_time_order_and_pass_over_names_that_are_not_dates(tmp_path):
    feedback = layout.feedback_uri(storage.normalize(tmp_path))
    for arrival in (T0 + timedelta(days=40), T0, T0 + timedelta(hours=5)):
        _deliver(feedback, arrival, "x.gz")
    storage.write_bytes(storage.join(feedback, "2026/02/31/00", "x.gz"), b"")  # no such day
    storage.write_bytes(storage.join(feedback, "2026/03/01/99", "x.gz"), b"")  # no such hour
    hours = [hour for hour, _ in layout.hour_folders(feedback)]
    assert hours == [T0.replace(minute=0), T0.replace(minute=0) + timedelta(hours=5), T0.replace(minute=0) + timedelta(days=40)]
    assert [hour for hour, _ in layout.hour_folders(feedback, newest_first=True)] == hours[::-1]
    assert layout.last_arrival_hour(feedback) == hours[-1]
    assert layout.last_arrival_hour(storage.join(feedback, "nothing")) is None

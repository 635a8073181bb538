from datetime import datetime, timezone

import pytest

from models import storage
from models.events import PredictionEvent, parse_line
from serving.sink_backends import open_sink
from serving.sinks import FirehoseFileSink, SinkError


def test_file_sink_writes_firehose_layout_that_the_event_parser_reads(tmp_path):
    received = datetime(2026, 3, 4, 17, 59, 30, tzinfo=timezone.utc)
    sink = FirehoseFileSink(str(tmp_path / "feedback"), clock=lambda: received)
    events = [PredictionEvent(event_id=f"e{i}", ts=received, request_id="r", partner_id="p", app_id="a",
                              model_version=2, arm="challenger", neighbors=["b"], scores=[0.9]).to_json_dict()
              for i in range(3)]
    sink.write(events)
    sink.write([])  # nothing to write: no empty object
    files = storage.list_files(str(tmp_path / "feedback"))
    assert len(files) == 1
    assert "/feedback/2026/03/04/17/appsim-serving-" in files[0] and files[0].endswith(".gz")
    assert "-1-2026-03-04-17-59-30-" in files[0]
    parsed = [parse_line(line) for line in storage.iter_lines(files[0])]
    assert [e.event_id for e in parsed] == ["e0", "e1", "e2"] and parsed[0].arm == "challenger"


def test_file_sink_failure_is_a_sink_error(tmp_path):
    (tmp_path / "feedback").write_text("a file where the folder should be")
    with pytest.raises(SinkError, match="could not write 1 events"):
        FirehoseFileSink(str(tmp_path / "feedback")).write([{"event_id": "e"}])


def test_open_sink_on_a_store_uri_is_the_file_sink(tmp_path):
    assert isinstance(open_sink(str(tmp_path)), FirehoseFileSink)

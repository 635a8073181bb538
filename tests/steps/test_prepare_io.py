"""steps/prepare_io.py: reading a feedback object gives the standard library's gzip content and error words."""

from __future__ import annotations

import gzip
import zlib

import pytest

from steps.prepare_io import read_file

LINES = b"".join(b'{"event_id":"e-%d","event_type":"click"}\n' % n for n in range(20_000))


def _deliver(tmp_path, data: bytes) -> str:
    path = tmp_path / "part-0.gz"
    path.write_bytes(data)
    return f"file://{path}"


def test_members_and_padding_read_as_gzip_reads_them(tmp_path):
    data = gzip.compress(LINES[:300_000], mtime=0) + b"\x00" * 8 + gzip.compress(LINES[300_000:], mtime=0)

    assert read_file(_deliver(tmp_path, data)) == (gzip.decompress(data), None)


def test_a_truncated_file_keeps_the_complete_lines_zlib_decompresses(tmp_path):
    data = gzip.compress(LINES, mtime=0)
    cut = data[:len(data) // 2]
    partial = zlib.decompressobj(wbits=31).decompress(cut)

    content, error = read_file(_deliver(tmp_path, cut))

    assert content == partial[:partial.rfind(b"\n") + 1] and len(content) > 100_000
    assert error == "EOFError: Compressed file ended before the end-of-stream marker was reached"


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:], id="flipped-byte"),
    pytest.param(lambda data: data[:-8] + bytes(8), id="bad-crc"),
    pytest.param(lambda data: b"\x00not gzip at all" * 10, id="not-gzip"),
])
def test_a_corrupt_file_is_reported_in_zlibs_words(tmp_path, damage):
    data = damage(gzip.compress(LINES, mtime=0))
    with pytest.raises(zlib.error) as expected:
        zlib.decompress(data, wbits=31)

    content, error = read_file(_deliver(tmp_path, data))

    assert error == f"error: {expected.value}"
    assert content == content[:content.rfind(b"\n") + 1] and LINES.startswith(content)

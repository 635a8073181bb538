"""The canonical-line matcher: PrepareFeedback's fast path for the lines producers write.

Serving and the simulator write every event as orjson writes the model's JSON dict: every field of the
event type in ``models/events.py`` order, no spaces, ``ts`` as ``format_ts`` spells it. Almost every line
of a window has that layout, so this module proves a line valid by matching its bytes against the layout
of each event type, compiled from the pydantic models and ``prepare_sql.FIELD_RULES`` into a small program
(``PROGRAMS``), and reads the values the later steps need from the same pass. The match is a byte
loop compiled by numba (``_match``): no JSON parser, no per-line Python.

The layout is strict where JSON is lenient, so a matched line is one ``models.events.parse_line`` accepts
with the same values: no escapes (a backslash never matches), no control characters in strings, string
lengths counted in characters (the content is valid UTF-8: the caller checks), each key once in the
model's order (so no duplicate and no extra key), numbers in JSON's grammar and provably finite and in
range, ``ts`` in the canonical form of a real date between 2000 and 2099. Any other line, valid or not, is
left unmatched for the other paths (``prepare_sql.typed_sql``, then the reference validator), which give
it its exact outcome: a narrow layout costs speed on odd lines, never correctness.

tests/steps/test_prepare_differential.py holds it to the reference on generated lines, byte mutations of the
producers' lines and lenient cousins of them; tests/steps/test_prepare_canonical.py holds the layouts to what
producers write. The compiled functions run without numba's reference counting (``_nrt=False``: they allocate
nothing, and a count per array per call cost more than the matching) and without the GIL (a unit per thread).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.events import EVENT_TYPES, SCHEMA_VERSION
from steps.prepare_sql import COMMON_RULES, EVENT_MODELS, FIELD_RULES, FieldRule

# Opcodes of a layout program; each op is a row (opcode, a, b, span, flag) of an int64 array.
LITERAL = 0   # a: offset in the literal bytes, b: length
STRING = 1    # a: max characters, b: 1 if null is allowed; "..." with no escape or control character
TIMESTAMP = 2  # "YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+00:00)" of a real date, years 20xx -> ts_us
INTEGER = 3   # a: max digits; -?(0|[1-9][0-9]*)
VERSION = 4   # a: highest version; [1-9][0-9]{0,2} in 1..a
BOOLEAN = 5   # true | false -> the flag
NUMBER = 6    # a: range (NO_RANGE, NON_NEGATIVE, UNIT_INTERVAL), b: 1 if null is allowed
STRING_LIST = 7  # a: max characters of an element
NUMBER_LIST = 8
NO_RANGE, NON_NEGATIVE, UNIT_INTERVAL = 0, 1, 2
MAX_INTEGER_DIGITS = 18  # pydantic reads longer ones too: those lines take the other paths

# Values read from a matched line: the byte spans of strings and numbers, and flags.
SPANS = ("event_id", "app_id", "user_id", "revenue")
FLAGS = ("positive", "attributed")
_SPAN_OF = {name: SPANS.index(name) for name in SPANS}
_FLAG_OF = {"clicked": FLAGS.index("positive"), "converted": FLAGS.index("positive"),
            "request_id": FLAGS.index("attributed")}


@dataclass(frozen=True)
class Programs:
    """The layouts as ops: ``prefix``, the fields every event type starts with up to its ``event_type`` value, then
    each type's rest: type ``t``'s are rows ``first[t]:first[t + 1]`` of ``ops`` (each line reads the prefix once)."""

    prefix: np.ndarray  # int64 (m, 5)
    ops: np.ndarray  # int64 (n, 5)
    first: np.ndarray  # int64 (len(EVENT_TYPES) + 1,)
    literals: np.ndarray  # uint8


def _value_op(rule: FieldRule) -> tuple[int, int, int]:
    """The (opcode, a, b) that reads a field of this rule; ValueError for a rule no op can check."""
    if rule.kind == "id":
        return STRING, rule.max_length, int(rule.nullable)
    if rule.kind == "ts":
        return TIMESTAMP, 0, 0
    if rule.kind == "int" and rule.name == "schema_version":
        return VERSION, SCHEMA_VERSION, 0
    if rule.kind == "int":
        return INTEGER, MAX_INTEGER_DIGITS, 0
    if rule.kind == "bool":
        return BOOLEAN, 0, 0
    if rule.kind == "number":
        ranges = {(None, None): NO_RANGE, (0.0, None): NON_NEGATIVE, (0.0, 1.0): UNIT_INTERVAL}
        if (rule.minimum, rule.maximum) not in ranges:
            raise ValueError(f"field {rule.name}: no layout for the range [{rule.minimum}, {rule.maximum}]")
        return NUMBER, ranges[rule.minimum, rule.maximum], int(rule.nullable)
    if rule.kind == "id_list":
        return STRING_LIST, rule.max_length, 0
    if rule.kind == "number_list":
        return NUMBER_LIST, 0, 0
    raise ValueError(f"field {rule.name}: no layout for the kind {rule.kind}")


def _layout(event_type: str) -> list[bytes | tuple[int, int, int, int, int]]:
    """The type's layout as orjson writes its model's JSON dict (``{"field":value,...}``, model field order): literal
    text, and value ops (opcode, a, b, span, flag), split just before the ``event_type`` value."""
    rules = {rule.name: rule for rule in (*COMMON_RULES, *FIELD_RULES[event_type])}
    pieces: list[bytes | tuple[int, int, int, int, int]] = []
    for position, name in enumerate(EVENT_MODELS[event_type].model_fields):
        pieces.append((("{" if position == 0 else ",") + f'"{name}":').encode())
        if name == "event_type":
            pieces += [b'"', b"", f'{event_type}"'.encode()]  # b"": where the prefix ends
        else:
            pieces.append((*_value_op(rules[name]), _SPAN_OF.get(name, -1), _FLAG_OF.get(name, -1)))
    pieces.append(b"}")
    return pieces


def compile_programs() -> Programs:
    """Every event type's layout as ops (adjacent literal text merged into one op), the shared prefix once."""
    literals = bytearray()

    def ops_of(pieces: list) -> list[tuple[int, int, int, int, int]]:
        ops, text = [], b""
        for piece in [*pieces, None]:
            if isinstance(piece, bytes):
                text += piece
                continue
            if text:  # adjacent literal text is one op
                ops.append((LITERAL, len(literals), len(text), -1, -1))
                literals.extend(text)
                text = b""
            if piece is not None:
                ops.append(piece)
        return ops

    layouts = [_layout(event_type) for event_type in EVENT_TYPES]
    cut = layouts[0].index(b"")
    if any(layout[:cut + 1] != layouts[0][:cut + 1] for layout in layouts):
        raise ValueError("the event types do not share their fields up to event_type: no common prefix")
    prefix = ops_of(layouts[0][:cut])
    ops, first = [], [0]
    for layout in layouts:
        ops += ops_of(layout[cut + 1:])
        first.append(len(ops))
    return Programs(np.array(prefix, np.int64), np.array(ops, np.int64), np.array(first, np.int64),
                    np.frombuffer(bytes(literals), np.uint8).copy())


PROGRAMS = compile_programs()


TABLE_SCHEMA = pa.schema([("source", pa.int32()), ("line", pa.int64()), ("accepted", pa.bool_()),
                          ("event_id", pa.large_string()), ("kind", pa.int8()), ("ts_us", pa.int64()),
                          ("app_id", pa.large_string()), ("user_id", pa.large_string()), ("positive", pa.bool_()),
                          ("attributed", pa.bool_()), ("revenue", pa.float64()), ("raw", pa.large_string())])
"""``prepare_sql.typed_sql``'s columns (``accepted`` and ``EVENT_COLUMNS``), ``raw`` on every row."""


def canonical_table(source: int, content: bytes) -> pa.Table:
    """Each line of ``content`` (valid UTF-8, every line ended by a newline) as a row numbered from 1: ``accepted``
    when it matched a layout, then its values as ``prepare_sql.typed_sql`` extracts them (NULL on other rows, and
    ``user_id`` on predictions), and ``raw``: the line *with its newline* and any carriage returns before it, a view
    of ``content`` (no copy: few lines need their text; ``prepare_sql.matched_sql`` trims it to ``split_lines``'s line)."""
    buffer = np.frombuffer(content, np.uint8)
    n = _count_lines(buffer)
    starts = np.empty(n + 1, np.int64)
    accepted, kind, ts_us = np.zeros(n, np.bool_), np.zeros(n, np.int8), np.zeros(n, np.int64)
    flags = np.zeros((len(FLAGS), n), np.bool_)
    # Each span's bytes, copied while the line is in cache (a second pass would wait on memory once a line).
    offsets = np.zeros((len(SPANS), n + 1), np.int64)
    data = np.empty((len(SPANS), len(content)), np.uint8)  # pages never written are never resident
    _match(buffer, starts, PROGRAMS.prefix, PROGRAMS.ops, PROGRAMS.first, PROGRAMS.literals, accepted, kind, ts_us,
           flags, offsets, data, np.zeros((len(SPANS), 2), np.int64))
    valid = pa.array(accepted)
    missing = ~accepted  # the mask of every value column

    def strings(slot: str) -> pa.LargeStringArray:
        row = SPANS.index(slot)
        present = pa.array(np.diff(offsets[row]) > 0)  # only accepted lines' values were copied
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets[row]), pa.py_buffer(data[row, :offsets[row, n]]),
                                                present.buffers()[1], n - present.true_count)

    revenue = pc.if_else(valid, pc.coalesce(strings("revenue").cast(pa.float64()), 0.0), None)
    columns = [pa.array(np.full(n, source, np.int32)), pa.array(np.arange(1, n + 1, dtype=np.int64)), valid,
               strings("event_id"), pa.array(kind, mask=missing), pa.array(ts_us, mask=missing), strings("app_id"),
               strings("user_id"), pa.array(flags[FLAGS.index("positive")], mask=missing),
               pa.array(flags[FLAGS.index("attributed")], mask=missing), revenue,
               pa.LargeStringArray.from_buffers(n, pa.py_buffer(starts), pa.py_buffer(content))]
    return pa.Table.from_arrays(columns, schema=TABLE_SCHEMA)


def _cached(function):
    """``function`` compiled without the GIL or reference counting, its machine code cached on disk (beside the module,
    else in ``NUMBA_CACHE_DIR`` or the user's cache folder). Where none is writable (a read-only install and home),
    numba refuses to cache: the matcher is then compiled in every process (~16 s), with a warning naming the fix."""
    try:
        return numba.njit(nogil=True, cache=True, _nrt=False)(function)
    except RuntimeError as refused:  # numba: "cannot cache function ...: no locator available"
        warnings.warn(f"{refused}; PrepareFeedback's matcher compiles in every process (~16 s): set NUMBA_CACHE_DIR "
                      "to a writable folder", RuntimeWarning, stacklevel=2)
        return numba.njit(nogil=True, _nrt=False)(function)


def load() -> None:
    """The matcher's machine code, loaded from numba's cache or compiled (``_cached``). A cache file numba cannot read
    (numba writes its own atomically, but a cut copy or a damaged disk can truncate one: numba would then fail in
    every process until someone deleted it) is discarded with a warning and rebuilt."""
    _recovering(_count_lines, lambda: _count_lines(np.frombuffer(b"\n", np.uint8)))
    _recovering(_match, lambda: canonical_table(0, b"\n"))


def _recovering(function, first_call) -> None:
    try:
        first_call()
    except Exception as damaged:  # numba unpickles its cache files: a cut one raises whatever pickle raises
        warnings.warn(f"numba's cache of {function.__name__} could not be read ({damaged!r}): rebuilding it",
                      RuntimeWarning, stacklevel=2)
        function._cache.flush()  # numba's per-function cache (private API; numba is pinned): an empty index
        first_call()


@_cached
def _count_lines(content):  # pragma: no cover
    lines = 0
    for byte in content:
        if byte == 10:
            lines += 1
    return lines


@_cached
def _match(content, starts, prefix, ops, first, literals, accepted, kind, ts_us, flags, offsets, data, spans):  # pragma: no cover
    """Matches each line of ``content`` against the layouts, then expects its newline (carriage returns before it are
    dropped, as ``prepare_io.split_lines`` does): no separate pass finds the line's end first, as no op reads past a
    newline. ``starts`` gets each line's first byte, and the end of the last line; an
    accepted line's spans (``spans`` is scratch) are copied to ``data`` while the line is in cache (a row per span,
    Arrow's layout with ``offsets``). One loop interprets the prefix's ops, then the type's: numba passes an array
    as a struct of seven words, and a call per line cost more than the matching (helpers are inlined for the same
    reason)."""
    end = content.shape[0]  # the ops' bound: none reads past a newline (each fails on a control character)
    next_start = 0
    for line in range(accepted.shape[0]):
        start = starts[line] = next_start
        for slot in range(spans.shape[0]):
            offsets[slot, line + 1] = offsets[slot, line]
            spans[slot, 0] = spans[slot, 1] = 0
        at = start
        program = prefix
        k = 0
        k_end = prefix.shape[0]
        event_type = -1
        while at >= 0:
            if k == k_end:
                if event_type >= 0:
                    break
                # The prefix is read: the type whose first literal ('<type>",...') follows.
                for candidate in range(first.shape[0] - 1):
                    if _literal(content, at, end, literals, ops[first[candidate], 1], ops[first[candidate], 2]) >= 0:
                        event_type = candidate
                        break
                if event_type < 0:
                    at = -1
                    break
                program = ops
                k = first[event_type]
                k_end = first[event_type + 1]
                continue
            op, a, b, span, flag = program[k, 0], program[k, 1], program[k, 2], program[k, 3], program[k, 4]
            k += 1
            value_start = at
            if op == LITERAL:
                at = _literal(content, at, end, literals, a, b)
                continue
            if (op == STRING or op == NUMBER) and b == 1 and _is_null(content, at, end):
                at += 4
                continue
            if op == STRING:
                at = _string(content, at, end, a)
                if at >= 0:
                    if span >= 0:
                        spans[span, 0] = value_start + 1
                        spans[span, 1] = at - 1
                    if flag >= 0:
                        flags[flag, line] = True
            elif op == TIMESTAMP:
                at = _timestamp(content, at, end, ts_us, line)
            elif op == INTEGER:
                at = _integer(content, at, end, a)
            elif op == VERSION:
                at = _version(content, at, end, a)
            elif op == BOOLEAN:
                if at + 4 <= end and content[at] == 116 and content[at + 1] == 114 and content[at + 2] == 117 \
                        and content[at + 3] == 101:  # true
                    if flag >= 0:
                        flags[flag, line] = True
                    at += 4
                elif at + 5 <= end and content[at] == 102 and content[at + 1] == 97 and content[at + 2] == 108 \
                        and content[at + 3] == 115 and content[at + 4] == 101:  # false
                    at += 5
                else:
                    at = -1
            elif op == NUMBER:
                at = _number(content, at, end, a)
                if at >= 0 and span >= 0:
                    spans[span, 0] = value_start
                    spans[span, 1] = at
            elif op == STRING_LIST or op == NUMBER_LIST:
                at = _list(content, at, end, op, a)
            else:
                at = -1
        matched = at >= 0
        if matched:  # the line must end here: carriage returns (split_lines drops them), then its newline
            while content[at] == 13:
                at += 1
            matched = content[at] == 10
        if not matched:  # what the attempt wrote is masked (not accepted)
            at = start
            while content[at] != 10:
                at += 1
            next_start = at + 1
            continue
        next_start = at + 1
        accepted[line] = True
        kind[line] = event_type
        for slot in range(spans.shape[0]):
            at = offsets[slot, line]
            for j in range(spans[slot, 0], spans[slot, 1]):
                data[slot, at] = content[j]
                at += 1
            offsets[slot, line + 1] = at
    starts[accepted.shape[0]] = next_start


@numba.njit(nogil=True, _nrt=False, inline="always")
def _literal(content, at, end, literals, first, length):  # pragma: no cover
    """The position after ``literals[first:first + length]`` at ``at``, -1 if it is not there."""
    if at + length > end:
        return -1
    for j in range(length):
        if content[at + j] != literals[first + j]:
            return -1
    return at + length


@numba.njit(nogil=True, _nrt=False, inline="always")
def _is_null(content, at, end):  # pragma: no cover
    return at + 4 <= end and content[at] == 110 and content[at + 1] == 117 and content[at + 2] == 108 \
        and content[at + 3] == 108


@numba.njit(nogil=True, _nrt=False, inline="always")
def _string(content, at, end, max_characters):  # pragma: no cover
    """The position after a string of 1..max_characters characters, -1 if there is none."""
    if at >= end or content[at] != 34:  # '"'
        return -1
    at += 1
    first = at
    while at < end:
        byte = content[at]
        if byte == 34:
            break
        if byte < 32 or byte == 92:  # a control character (invalid JSON) or a backslash (an escape)
            return -1
        at += 1
    if at >= end or at == first:
        return -1
    if at - first > max_characters:  # more bytes than allowed characters: count the characters
        characters = 0
        for j in range(first, at):
            if content[j] < 0x80 or content[j] >= 0xC0:  # not a UTF-8 continuation byte: a character starts here
                characters += 1
        if characters > max_characters:
            return -1
    return at + 1


@numba.njit(nogil=True, _nrt=False, inline="always")
def _digits(content, at, end, count):  # pragma: no cover
    """The value of ``count`` decimal digits at ``at``, -1 if they are not all digits."""
    if at + count > end:
        return -1
    value = 0
    for j in range(count):
        digit = content[at + j] - 48
        if digit < 0 or digit > 9:
            return -1
        value = value * 10 + digit
    return value


@numba.njit(nogil=True, _nrt=False, inline="always")
def _days_from_civil(year, month, day):  # pragma: no cover
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if month <= 2:
        year -= 1
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


@numba.njit(nogil=True, _nrt=False, inline="always")
def _timestamp(content, at, end, ts_us, line):  # pragma: no cover
    """The position after a canonical ts (its microseconds to ``ts_us[line]``), -1 if there is none."""
    if at + 22 > end or content[at] != 34 or content[at + 1] != 50 or content[at + 2] != 48:  # '"20'
        return -1
    year = _digits(content, at + 1, end, 4)
    month = _digits(content, at + 6, end, 2)
    day = _digits(content, at + 9, end, 2)
    hour = _digits(content, at + 12, end, 2)
    minute = _digits(content, at + 15, end, 2)
    second = _digits(content, at + 18, end, 2)
    if year < 0 or month < 1 or month > 12 or day < 1 or hour < 0 or hour > 23 or minute < 0 or minute > 59 \
            or second < 0 or second > 59:
        return -1
    if content[at + 5] != 45 or content[at + 8] != 45 or content[at + 11] != 84 or content[at + 14] != 58 \
            or content[at + 17] != 58:  # the separators - - T : :
        return -1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    month_days = 31
    if month == 2:
        month_days = 29 if leap else 28
    elif month == 4 or month == 6 or month == 9 or month == 11:
        month_days = 30
    if day > month_days:
        return -1
    at += 20
    micros = 0
    if content[at] == 46:  # ".": exactly six digits
        micros = _digits(content, at + 1, end, 6)
        if micros < 0:
            return -1
        at += 7
    if at + 2 <= end and content[at] == 90 and content[at + 1] == 34:  # 'Z"'
        at += 2
    elif at + 7 <= end and content[at] == 43 and content[at + 1] == 48 and content[at + 2] == 48 \
            and content[at + 3] == 58 and content[at + 4] == 48 and content[at + 5] == 48 and content[at + 6] == 34:
        at += 7  # '+00:00"'
    else:
        return -1
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    ts_us[line] = seconds * 1_000_000 + micros
    return at


@numba.njit(nogil=True, _nrt=False, inline="always")
def _integer(content, at, end, max_digits):  # pragma: no cover
    if at < end and content[at] == 45:  # "-"
        at += 1
    return _unsigned(content, at, end, max_digits)


@numba.njit(nogil=True, _nrt=False, inline="always")
def _unsigned(content, at, end, max_digits):  # pragma: no cover
    """The position after JSON's 0 | [1-9][0-9]* of at most max_digits digits, -1 if there is none."""
    if at >= end or content[at] < 48 or content[at] > 57:
        return -1
    if content[at] == 48:
        return at + 1
    first = at
    while at < end and 48 <= content[at] <= 57:
        at += 1
    return at if at - first <= max_digits else -1


@numba.njit(nogil=True, _nrt=False, inline="always")
def _version(content, at, end, highest):  # pragma: no cover
    after = _unsigned(content, at, end, 3)
    if after < 0 or content[at] == 48:
        return -1
    return after if _digits(content, at, end, after - at) <= highest else -1


@numba.njit(nogil=True, _nrt=False, inline="always")
def _number(content, at, end, value_range):  # pragma: no cover
    """The position after a JSON number that is finite as a double and in the range, -1 if there is none.

    Finite: at most 16 integer digits and a two-digit exponent (< 1e116). In range, conservatively: a
    non-negative number has no minus sign (so -0.0 takes the other paths); a unit-interval one is 0, 1, 0.x,
    1.0..., or d[.ddd]e-N with N > 0 (below 10 * 10^-1)."""
    negative = at < end and content[at] == 45
    if negative:
        if value_range != NO_RANGE:
            return -1
        at += 1
    integer_start = at
    at = _unsigned(content, at, end, 16)
    if at < 0:
        return -1
    integer_digits = at - integer_start
    integer_value = _digits(content, integer_start, end, integer_digits) if integer_digits <= 2 else 99
    fraction_zero = True
    if at < end and content[at] == 46:  # "."
        at += 1
        fraction_start = at
        while at < end and 48 <= content[at] <= 57:
            if content[at] != 48:
                fraction_zero = False
            at += 1
        if at == fraction_start:
            return -1
    exponent_negative = False
    exponent_value = 0
    has_exponent = at < end and (content[at] == 101 or content[at] == 69)  # e E
    if has_exponent:
        at += 1
        if at < end and (content[at] == 43 or content[at] == 45):  # + -
            exponent_negative = content[at] == 45
            at += 1
        exponent_start = at
        while at < end and 48 <= content[at] <= 57:
            exponent_value = exponent_value * 10 + content[at] - 48
            at += 1
        if at == exponent_start or at - exponent_start > 2:
            return -1
    if value_range == UNIT_INTERVAL:
        if has_exponent:
            if not (exponent_negative and exponent_value > 0 and integer_digits == 1):
                return -1
        elif not (integer_value == 0 or (integer_value == 1 and fraction_zero)):
            return -1
    return at


@numba.njit(nogil=True, _nrt=False, inline="always")
def _list(content, at, end, op, max_characters):  # pragma: no cover
    """The position after a list of strings (STRING_LIST) or finite numbers (NUMBER_LIST), -1 if there is none."""
    if at >= end or content[at] != 91:  # "["
        return -1
    at += 1
    if at < end and content[at] == 93:  # "]": empty
        return at + 1
    while True:
        at = _string(content, at, end, max_characters) if op == STRING_LIST else _number(content, at, end, NO_RANGE)
        if at < 0 or at >= end:
            return -1
        if content[at] == 93:
            return at + 1
        if content[at] != 44:  # ","
            return -1
        at += 1


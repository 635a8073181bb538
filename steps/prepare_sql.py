"""PrepareFeedback's logic as SQL: one definition that every columnar engine runs.

Written in DuckDB's dialect and kept to what sqlglot can transpile (``sqlglot.transpile(sql,
read="duckdb", write="spark")``), so the DuckDB engine (steps/prepare_duckdb.py) runs it as is and
a Spark engine runs the transpiled text. Values are inlined as literals (no engine-specific
parameter syntax). The pure-Python reader in steps/prepare.py is the reference these statements
are tested against (tests/steps/test_prepare_differential.py).

How an engine runs it (the DuckDB engine is the worked example):

1. Register the window's lines as ``raw_lines`` (``RAW_COLUMNS``: source INTEGER = the file's index
   in arrival order, line BIGINT = 1-based line number, raw VARCHAR = the line without its
   newline and trailing carriage returns) and the catalog as ``catalog`` (app_id VARCHAR). Lines
   that are not valid UTF-8 carry U+FFFD (Spark's ``spark.read.text`` does the same), which keeps
   them off the fast path.
2. Materialize ``typed_sql()`` as table ``typed``. Its rows with ``accepted`` are events the fast
   path proved valid, with their fields extracted (``EVENT_COLUMNS``). The others (rare) must go
   to the reference validator ``models.events.parse_line`` with the line's original bytes: a
   valid event becomes a row of ``slow_events`` (``EVENT_COLUMNS``, see ``event_row``), a bad
   line goes to the quarantine with parse_line's reason.
3. Materialize ``classified_sql(window)`` as table ``classified``: global dedupe by event_id
   (first occurrence by (source, line) wins, over valid events only), then the outcome of each
   row: duplicate, before_window, after_window, kept (a valid in-window event prepare must keep
   but not train on: ``kept_reason``), or good; and the split (``holdout``).
4. Run the read-only queries below on ``classified`` and hand their results to
   ``steps.prepare`` (``outcome_counts_sql``, ``interactions_sql``, ``app_totals_sql``,
   ``revenue_rows_sql``, ``kept_rows_sql``, ``users_sql``).

The DuckDB engine runs the canonical-line matcher (steps/prepare_canonical.py) before step 2: it accepts
the lines that are exactly in the producers' layout and extracts their values (``matched_sql``); only the
lines it leaves (``unmatched_sql``) go on to ``typed_sql``.

The fast path accepts only lines it can prove valid under models/events.py: no backslash (so no
escapes: no lone surrogates, and string lengths are character counts), no key but the event type's
own fields and each once, no trailing commas, canonical timestamps (``YYYY-MM-DDTHH:MM:SS[.ffffff]``
then ``Z`` or ``+00:00``), and every field of ``FIELD_RULES`` checked for JSON type and range.
Everything else takes the slow path, so a bad line gets exactly the reference's reason code.
``FIELD_RULES`` is checked against the pydantic models by tests/steps/test_prepare_sql.py.

Portability: steps 3 and 4 use only portable SQL (window function, CASE, count_if, min/max, joins).
The fast path (``typed_sql``) uses DuckDB's JSON functions; sqlglot renames them for Spark
(``JSON_VALID``, ``FROM_JSON(raw, '{"field": "JSON", ...}')`` giving each field's JSON text or NULL,
``JSON_OBJECT_KEYS``, ``REGEXP_FULL_MATCH``, ``EPOCH_US``, ``ISFINITE``, ``LIST_BOOL_AND``) but Spark
lacks or differs on some. An engine without them either registers functions with DuckDB's
semantics under those names, or skips the fast path (``accepted`` false for every line) and sends
every line to the reference validator: correct, only slower.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.events import (
    EVENT_TYPES, MAX_EVENT_ID_LENGTH, MAX_ID_LENGTH, SCHEMA_VERSION, TS_MAX, TS_MIN, ClickEvent, ConversionEvent,
    PredictionEvent,
)

RAW_COLUMNS = ("source", "line", "raw")
EVENT_COLUMNS = ("source", "line", "event_id", "kind", "ts_us", "app_id", "user_id", "positive", "attributed",
                 "revenue", "raw")
"""An event row: ``kind`` indexes EVENT_TYPES; ``ts_us`` is UTC epoch microseconds; ``user_id`` is NULL for
predictions; ``positive`` = clicked/converted; ``attributed`` = request_id set (always for predictions);
``revenue`` is 0.0 unless a conversion says otherwise; ``raw`` is kept only for lines that may be needed
verbatim later (apps outside the catalog), NULL otherwise."""

PREDICTION, CLICK, CONVERSION = (EVENT_TYPES.index(name) for name in ("prediction", "click", "conversion"))
COLD_START_PREFIX = "new:"  # serving's app_id for a query app described by metadata only
KEPT_REASONS = ("cold_start_query", "app_not_in_catalog")
OUTCOMES = ("good", "duplicate", "before_window", "after_window", "kept")

# A JSON leniency of DuckDB's reader that pydantic refuses: trailing commas (conservative: a string that
# merely looks like one, e.g. "a,]", only costs a slow-path parse). Its other leniency, nan/inf spelled any
# way, cannot reach an accepted line: every field is type-checked and no other key is allowed.
_TRAILING_COMMA = r",\s*[\]}]"
_TS_PATTERN = (r"20\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{6})?"
               r"(Z|\+00:00)")
assert TS_MIN.year == 2000 and TS_MAX.year == 2100, "_TS_PATTERN's year range follows models.events"


@dataclass(frozen=True)
class FieldRule:
    """What the fast path checks for one field of an event type (mirrors the pydantic annotation)."""

    name: str
    kind: str  # id | bool | int | number | id_list | number_list
    required: bool = True
    nullable: bool = False
    max_length: int = MAX_ID_LENGTH
    minimum: float | None = None
    maximum: float | None = None


# event_id, ts, schema_version and event_type have their own checks (_common_checks, _kind).
FIELD_RULES: dict[str, tuple[FieldRule, ...]] = {
    "prediction": (
        FieldRule("request_id", "id"), FieldRule("partner_id", "id"), FieldRule("app_id", "id"),
        FieldRule("model_version", "int"), FieldRule("arm", "id"), FieldRule("neighbors", "id_list"),
        FieldRule("scores", "number_list"),
        FieldRule("predicted_ctr", "number", required=False, nullable=True, minimum=0.0, maximum=1.0),
    ),
    "click": (
        FieldRule("app_id", "id"), FieldRule("campaign_id", "id"), FieldRule("partner_id", "id"),
        FieldRule("user_id", "id"), FieldRule("clicked", "bool"),
        FieldRule("request_id", "id", required=False, nullable=True),
    ),
    "conversion": (
        FieldRule("app_id", "id"), FieldRule("campaign_id", "id"), FieldRule("partner_id", "id"),
        FieldRule("user_id", "id"), FieldRule("converted", "bool"),
        FieldRule("revenue", "number", required=False, minimum=0.0),
        FieldRule("request_id", "id", required=False, nullable=True),
    ),
}
EVENT_MODELS = {"prediction": PredictionEvent, "click": ClickEvent, "conversion": ConversionEvent}
COMMON_FIELDS = ("event_id", "ts", "schema_version", "event_type")

_FIELDS = ("event_id", "event_type", "ts", "schema_version",
           *dict.fromkeys(rule.name for rules in FIELD_RULES.values() for rule in rules))
# One parse per line: every field as its JSON text ('"abc"', 'true', '1.5', '[...]'); SQL NULL when the
# key is absent *or* its value is null (the keys list tells the two apart where it matters).
_STRUCTURE = "{" + ", ".join(f'"{name}": "JSON"' for name in _FIELDS) + "}"


def _f(name: str) -> str:
    """The column holding a field's JSON text in typed_sql()."""
    return f"f_{name}"


def _is_string(fragment: str, max_length: int) -> str:
    # No backslash in the line, so a string's text is its characters between the quotes.
    return f"(starts_with({fragment}, '\"') AND length({fragment}) - 2 BETWEEN 1 AND {max_length})"


def _string(fragment: str) -> str:
    return f"{fragment}[2:-2]"


def _is_finite_number(fragment: str, rule: FieldRule | None = None) -> str:
    # A JSON number's text casts to a finite double; NaN/Infinity do not. DuckDB's cast also reads a quoted
    # '"4.99"', so strings are excluded first.
    number = f"TRY_CAST({fragment} AS DOUBLE)"
    checks = [f"NOT starts_with({fragment}, '\"')", f"isfinite({number})"]
    if rule is not None and rule.minimum is not None:
        checks.append(f"{number} >= {rule.minimum!r}")
    if rule is not None and rule.maximum is not None:
        checks.append(f"{number} <= {rule.maximum!r}")
    return "(" + " AND ".join(checks) + ")"


def _present(name: str) -> str:
    return f"list_contains(keys, '{name}')"


def _rule_check(rule: FieldRule) -> str:
    """A SQL condition, true only when the field provably satisfies the rule."""
    f = _f(rule.name)
    if rule.kind == "id":
        value = _is_string(f, rule.max_length)
    elif rule.kind == "bool":
        value = f"{f} IN ('true', 'false')"
    elif rule.kind == "int":
        value = f"regexp_full_match({f}, '-?[0-9]{{1,18}}')"
    elif rule.kind == "number":
        value = _is_finite_number(f, rule)
    elif rule.kind in ("id_list", "number_list"):
        element = _is_string("x", rule.max_length) if rule.kind == "id_list" else _is_finite_number("x")
        value = (f"(starts_with({f}, '[') AND coalesce(list_bool_and(list_transform(from_json({f}, '[\"JSON\"]'), "
                 f"x -> coalesce({element}, false))), true))")
    else:
        raise ValueError(f"unknown field rule kind {rule.kind}")
    if rule.required:
        return value
    if rule.nullable:
        return f"({f} IS NULL OR {value})"
    return f"(CASE WHEN {f} IS NULL THEN NOT {_present(rule.name)} ELSE {value} END)"


def _common_checks() -> str:
    versions = ", ".join(f"'{version}'" for version in range(1, SCHEMA_VERSION + 1))
    return " AND ".join((
        _is_string(_f("event_id"), MAX_EVENT_ID_LENGTH),
        "ts_value IS NOT NULL",
        f"(CASE WHEN {_f('schema_version')} IS NULL THEN NOT {_present('schema_version')} "
        f"ELSE {_f('schema_version')} IN ({versions}) END)",
    ))


def _ts_value() -> str:
    """The timestamp of a canonical ts (parsed once: checked, then extracted), NULL for any other."""
    ts = _string(_f("ts"))
    return (f"CASE WHEN starts_with({_f('ts')}, '\"') AND regexp_full_match({ts}, '{_TS_PATTERN}') "
            f"THEN TRY_CAST({_naive_ts(ts)} AS TIMESTAMP) END")


def _naive_ts(ts: str) -> str:
    """The date-time part of a canonical ts (its UTC offset is zero by the pattern)."""
    return f"substr({ts}, 1, CASE WHEN substr({ts}, 20, 1) = '.' THEN 26 ELSE 19 END)"


def _only_known_keys(rules: tuple[FieldRule, ...]) -> str:
    """Every top-level key is one of the type's fields, each once: no duplicate (DuckDB reads the first,
    pydantic the last) and no extra field (pydantic ignores it, but still refuses the line for JSON that
    DuckDB accepts, such as nan). Lines from newer producers with extra fields take the slow path.

    ``keys`` counts every key occurrence; this counts the type's fields present. A required field is
    present on an accepted line (its check is NULL or false otherwise), so it counts as a constant; an
    optional one is present when it has a value or, for a nullable one, when its key is listed."""
    required = 3 + sum(rule.required for rule in rules)  # event_id, event_type, ts and the type's own
    optional = [f"CAST({_f(rule.name)} IS NOT NULL{f' OR {_present(rule.name)}' if rule.nullable else ''} AS INTEGER)"
                for rule in (FieldRule("schema_version", "int", required=False), *rules) if not rule.required]
    return f"len(keys) = {' + '.join((str(required), *optional))}"


def typed_sql(raw_relation: str = "raw_lines", catalog_relation: str = "catalog") -> str:
    """The fast path over ``raw_relation``: every line once, with ``accepted`` and its ``EVENT_COLUMNS``.

    ``raw`` is carried for lines that are not accepted (the slow path needs them) and for accepted
    events of apps outside the catalog (they are written verbatim if kept).
    """
    event_type = _f("event_type")
    per_type = " ".join(
        f"WHEN '\"{name}\"' THEN " + " AND ".join((*(_rule_check(rule) for rule in rules), _only_known_keys(rules)))
        for name, rules in FIELD_RULES.items()
    )
    kinds = " ".join(f"WHEN '\"{name}\"' THEN {code}" for code, name in enumerate(EVENT_TYPES))
    columns = ", ".join(f"j.{name} AS {_f(name)}" for name in _FIELDS)
    accepted = f"coalesce(plain AND {_common_checks()} AND CASE {event_type} {per_type} ELSE false END, false)"
    return f"""
WITH guarded AS (
    SELECT source, line, raw,
           starts_with(raw, '{{') AND NOT contains(raw, '\\') AND NOT contains(raw, '\ufffd')
           AND NOT regexp_matches(raw, '{_TRAILING_COMMA}') AND json_valid(raw) AS plain
    FROM {raw_relation}
), parsed AS (
    SELECT source, line, raw, plain,
           CASE WHEN plain THEN from_json(raw, '{_STRUCTURE}') END AS j,
           CASE WHEN plain THEN json_keys(raw) END AS keys
    FROM guarded
), fields AS (
    SELECT source, line, raw, plain, keys, {columns}
    FROM parsed
), timed AS (
    SELECT *, {_ts_value()} AS ts_value
    FROM fields
), checked AS (
    SELECT *, {accepted} AS accepted
    FROM timed
)
SELECT source, line, accepted,
       CASE WHEN accepted THEN {_string(_f('event_id'))} END AS event_id,
       CASE WHEN accepted THEN CAST(CASE {event_type} {kinds} END AS TINYINT) END AS kind,
       CASE WHEN accepted THEN epoch_us(ts_value) END AS ts_us,
       CASE WHEN accepted THEN {_string(_f('app_id'))} END AS app_id,
       CASE WHEN accepted AND {event_type} <> '"prediction"' THEN {_string(_f('user_id'))} END AS user_id,
       CASE WHEN accepted THEN coalesce({_f('clicked')} = 'true' OR {_f('converted')} = 'true', false) END AS positive,
       CASE WHEN accepted THEN {event_type} = '"prediction"' OR {_f('request_id')} IS NOT NULL END AS attributed,
       CASE WHEN accepted AND {event_type} = '"conversion"' AND {_f('revenue')} IS NOT NULL
            THEN TRY_CAST({_f('revenue')} AS DOUBLE) WHEN accepted THEN 0.0 END AS revenue,
       CASE WHEN NOT accepted OR {_string(_f('app_id'))} NOT IN (SELECT app_id FROM {catalog_relation}) THEN raw END AS raw
FROM checked
"""


COMMON_RULES = (FieldRule("event_id", "id", max_length=MAX_EVENT_ID_LENGTH), FieldRule("ts", "ts"),
                FieldRule("schema_version", "int"), FieldRule("event_type", "event_type"))
"""The fields every event type starts with, as rules (steps/prepare_canonical.py compiles its layouts from them)."""


_LINE_TEXT = "rtrim(raw, chr(13) || chr(10))"  # a line's text, as split_lines gives it, from canonical_table's raw


def matched_sql(matched_relation: str, catalog_relation: str = "catalog") -> str:
    """``typed_sql``'s rows for the lines ``prepare_canonical.canonical_table`` accepted: ``raw`` kept where typed_sql
    keeps it (apps outside the catalog), as the line's text."""
    columns = ", ".join(name for name in EVENT_COLUMNS if name != "raw")
    return (f"SELECT accepted, {columns}, CASE WHEN app_id NOT IN (SELECT app_id FROM {catalog_relation}) "
            f"THEN {_LINE_TEXT} END AS raw FROM {matched_relation} WHERE accepted")


def unmatched_sql(matched_relation: str) -> str:
    """The lines ``prepare_canonical.canonical_table`` did not accept, as a ``raw_lines`` relation for ``typed_sql``."""
    return f"SELECT source, line, {_LINE_TEXT} AS raw FROM {matched_relation} WHERE NOT accepted"


def events_sql(typed_relation: str = "typed", slow_relation: str = "slow_events") -> str:
    """Every valid event: the fast path's plus the reference validator's."""
    columns = ", ".join(EVENT_COLUMNS)
    return f"SELECT {columns} FROM {typed_relation} WHERE accepted UNION ALL SELECT {columns} FROM {slow_relation}"


GOOD, DUPLICATE, BEFORE_WINDOW, AFTER_WINDOW, KEPT = (OUTCOMES.index(name) for name in (
    "good", "duplicate", "before_window", "after_window", "kept"))


def classified_sql(start_us: int, end_us: int, cut_us: int, events_relation: str = "events",
                   catalog_relation: str = "catalog", id_bucket: str = "hash(event_id)") -> str:
    """Each valid event's outcome (the code, an index into OUTCOMES, of the first that applies, in the reference's
    order) and split. A row holds only what the queries below read: the outcome as a TINYINT and no kept reason
    (``kept_rows_sql`` derives it for the kept rows), because at scale this table is most of what prepare holds (a
    name per row is a 16-byte string slot, plus 18 heap bytes for "app_not_in_catalog", on every row).

    Most event ids are unique, so only the rows whose id *hash* occurs more than once (a hash aggregate:
    the retried ids and a few collisions) are ordered by (source, line) within their event_id; a window
    over every row would sort them all, every column with them. A collision only adds rows that are then
    the first of their own event_id (``id_bucket``, an expression of event_id, may be any function of it).
    (source, line) names one row."""
    return f"""
WITH repeated AS (
    SELECT {id_bucket} AS bucket FROM {events_relation} GROUP BY {id_bucket} HAVING count(*) > 1
), later AS (
    SELECT source, line FROM (
        SELECT e.source, e.line, row_number() OVER (PARTITION BY e.event_id ORDER BY e.source, e.line) AS occurrence
        FROM (SELECT *, {id_bucket} AS bucket FROM {events_relation}) e JOIN repeated r ON e.bucket = r.bucket
    ) candidates WHERE occurrence > 1
), numbered AS (
    SELECT e.*, c.app_id IS NOT NULL AS in_catalog, d.line IS NOT NULL AS later_copy
    FROM {events_relation} e LEFT JOIN {catalog_relation} c ON e.app_id = c.app_id
         LEFT JOIN later d ON e.source = d.source AND e.line = d.line
)
SELECT source, line, kind, ts_us, app_id, user_id, positive, attributed, revenue,
       CAST(CASE WHEN later_copy THEN {DUPLICATE}
                 WHEN ts_us < {start_us} THEN {BEFORE_WINDOW}
                 WHEN ts_us >= {end_us} THEN {AFTER_WINDOW}
                 WHEN NOT in_catalog THEN {KEPT}
                 ELSE {GOOD} END AS TINYINT) AS outcome,
       ts_us >= {cut_us} AS holdout,
       CASE WHEN NOT later_copy AND ts_us >= {start_us} AND ts_us < {end_us} AND NOT in_catalog THEN raw END AS raw
FROM numbered
"""


def outcome_counts_sql(relation: str = "classified") -> str:
    """Rows per (outcome code, kind, holdout); the kept reasons are counted as the kept rows are written."""
    return f"SELECT outcome, kind, holdout, count(*) AS n FROM {relation} GROUP BY 1, 2, 3"


def users_sql(relation: str = "classified") -> str:
    """Distinct users among the good events."""
    return f"SELECT count(DISTINCT user_id) AS users FROM {relation} WHERE outcome = {GOOD} AND kind <> {PREDICTION}"


# The split's read-only queries each run once for both splits: ``holdout`` leads every row (and the order), and
# the engine cuts the result in two (steps.prepare_duckdb.split_result). One scan of ``classified`` each, not two.

def positive_counts_sql(relation: str = "classified") -> str:
    """Per split: co-engagement positives, and how many came from our own recommendations (no row: none)."""
    return (f"SELECT holdout, count(*) AS positives, "
            f"CAST(coalesce(count_if(attributed), 0) AS BIGINT) AS attributed_positives FROM {relation} WHERE outcome = {GOOD} AND positive AND kind <> {PREDICTION} GROUP BY holdout")


def interactions_sql(use_attributed_clicks: bool, relation: str = "classified") -> str:
    """One row per (split, user_id, app_id) with a positive in the split, sorted by (holdout, user_id, app_id).
    Counts are BIGINT (DuckDB's count_if is a HUGEINT, which Arrow carries as a decimal)."""
    attributed = "" if use_attributed_clicks else "AND NOT attributed"
    return f"""
SELECT holdout, user_id, app_id, CAST(count_if(kind = {CLICK}) AS BIGINT) AS clicks,
       CAST(count_if(kind = {CONVERSION}) AS BIGINT) AS conversions, min(ts_us) AS first_ts_us, max(ts_us) AS last_ts_us
FROM {relation}
WHERE outcome = {GOOD} AND positive AND kind <> {PREDICTION} {attributed}
GROUP BY holdout, user_id, app_id
ORDER BY holdout, user_id, app_id
"""


def app_totals_sql(relation: str = "classified") -> str:
    """Per (split, app) seen in the split (an impression or a conversion event): integer totals, sorted by
    (holdout, app_id)."""
    return f"""
SELECT holdout, app_id, CAST(count_if(kind = {CLICK}) AS BIGINT) AS impressions,
       CAST(count_if(kind = {CLICK} AND positive) AS BIGINT) AS clicks,
       CAST(count_if(kind = {CONVERSION} AND positive) AS BIGINT) AS conversions
FROM {relation}
WHERE outcome = {GOOD} AND kind <> {PREDICTION}
GROUP BY holdout, app_id
ORDER BY holdout, app_id
"""


def revenue_rows_sql(relation: str = "classified") -> str:
    """(holdout, app_id, revenue) of the conversions in arrival order: summed in that order per split, the
    floating-point totals are the reference's to the last bit."""
    return (f"SELECT holdout, app_id, revenue FROM {relation} WHERE outcome = {GOOD} "
            f"AND kind = {CONVERSION} AND positive ORDER BY source, line")


def kept_rows_sql(relation: str = "classified") -> str:
    """The kept events, verbatim, with their KEPT_REASONS name, in arrival order."""
    return (f"SELECT CASE WHEN kind = {PREDICTION} AND starts_with(app_id, '{COLD_START_PREFIX}') THEN "
            f"'{KEPT_REASONS[0]}' ELSE '{KEPT_REASONS[1]}' END AS kept_reason, source, line, raw "
            f"FROM {relation} WHERE outcome = {KEPT} ORDER BY source, line")


def event_row(event: PredictionEvent | ClickEvent | ConversionEvent) -> tuple:
    """A validated event as the fast path extracts it (``EVENT_COLUMNS`` from event_id to revenue)."""
    kind = EVENT_TYPES.index(event.event_type)
    ts_us = round(event.ts.timestamp() * 1_000_000)
    if kind == PREDICTION:
        return event.event_id, kind, ts_us, event.app_id, None, False, True, 0.0
    positive = event.clicked if kind == CLICK else event.converted
    revenue = event.revenue if kind == CONVERSION else 0.0
    return event.event_id, kind, ts_us, event.app_id, event.user_id, positive, bool(event.request_id), revenue

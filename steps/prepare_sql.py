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

The fast path accepts only lines it can prove valid under models/events.py: no backslash (so no
escapes: no lone surrogates, and string lengths are character counts), no duplicate keys, no
NaN/Infinity or trailing-comma leniency, canonical timestamps (``YYYY-MM-DDTHH:MM:SS[.ffffff]``
then ``Z`` or ``+00:00``), and every field of ``FIELD_RULES`` checked for JSON type and range.
Everything else takes the slow path, so a bad line gets exactly the reference's reason code.
``FIELD_RULES`` is checked against the pydantic models by tests/steps/test_prepare_sql.py.

Portability: steps 3 and 4 use only portable SQL (window function, CASE, count_if, min/max, joins).
The fast path (``typed_sql``) uses DuckDB's JSON functions, which sqlglot renames but Spark does not
all have: an engine without them defines, under the transpiled names, ``JSON_VALID(raw)``,
``JSON_TYPE(raw, paths)`` and ``GET_JSON_OBJECT(raw, paths)`` (both taking an array of JSONPaths and
returning an array: DuckDB's type names 'OBJECT', 'ARRAY', 'VARCHAR', 'BOOLEAN', 'UBIGINT', 'BIGINT',
'DOUBLE', 'NULL' or NULL when absent, and the unquoted value text), ``JSON_OBJECT_KEYS(raw)``,
``REGEXP_FULL_MATCH`` and ``EPOCH_US`` -- or it skips the fast path and sends every line to the
reference validator (correct, only slower): ``accepted`` false for all lines.
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

_NUMBER = "('UBIGINT', 'BIGINT', 'DOUBLE')"
_INTEGER = "('UBIGINT', 'BIGINT')"
# JSON leniencies of DuckDB's reader that pydantic refuses: trailing commas, + signs, nan/inf spelled any
# way. Conservative: a string that merely looks like one (e.g. "a,]") only costs a slow-path parse.
_LENIENT_JSON = r",\s*[\]}]|[:,\[]\s*(\+|-?([iI]|[nN][aA]))"  # no JSON value starts with i or na
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

_PATHS = ("$", "event_id", "event_type", "ts", "schema_version",
          *dict.fromkeys(rule.name for rules in FIELD_RULES.values() for rule in rules))


def _at(name: str) -> int:
    """1-based position of a field in the ``t`` (JSON types) and ``v`` (values) lists of typed_sql()."""
    return _PATHS.index(name) + 1


def _type(name: str) -> str:
    return f"t[{_at(name)}]"


def _value(name: str) -> str:
    return f"v[{_at(name)}]"


def _number_in_range(value: str, rule: FieldRule) -> str:
    checks = [f"isfinite(TRY_CAST({value} AS DOUBLE))"]
    if rule.minimum is not None:
        checks.append(f"TRY_CAST({value} AS DOUBLE) >= {rule.minimum!r}")
    if rule.maximum is not None:
        checks.append(f"TRY_CAST({value} AS DOUBLE) <= {rule.maximum!r}")
    return " AND ".join(checks)


def _rule_check(rule: FieldRule) -> str:
    """A SQL condition, true only when the field provably satisfies the rule."""
    t, v, path = _type(rule.name), _value(rule.name), f"'$.{rule.name}[*]'"
    if rule.kind == "id":
        present = f"({t} = 'VARCHAR' AND length({v}) BETWEEN 1 AND {rule.max_length})"
    elif rule.kind == "bool":
        present = f"{t} = 'BOOLEAN'"
    elif rule.kind == "int":
        present = f"{t} IN {_INTEGER}"
    elif rule.kind == "number":
        present = f"({t} IN {_NUMBER} AND {_number_in_range(v, rule)})"
    elif rule.kind == "id_list":
        present = (f"({t} = 'ARRAY' AND coalesce(list_bool_and(list_transform(json_type(raw, {path}), "
                   f"x -> x = 'VARCHAR')), true) AND coalesce(list_bool_and(list_transform("
                   f"json_extract_string(raw, {path}), x -> length(x) BETWEEN 1 AND {rule.max_length})), true))")
    elif rule.kind == "number_list":
        present = (f"({t} = 'ARRAY' AND coalesce(list_bool_and(list_transform(json_type(raw, {path}), "
                   f"x -> x IN {_NUMBER})), true) AND coalesce(list_bool_and(list_transform("
                   f"json_extract_string(raw, {path}), x -> isfinite(TRY_CAST(x AS DOUBLE)))), true))")
    else:
        raise ValueError(f"unknown field rule kind {rule.kind}")
    alternatives = [present]
    if not rule.required:
        alternatives.append(f"{t} IS NULL")
    if rule.nullable:
        alternatives.append(f"{t} = 'NULL'")
    return "(" + " OR ".join(alternatives) + ")"


def _common_checks() -> str:
    ts, version = _value("ts"), _value("schema_version")
    return " AND ".join((
        f"{_type('$')} = 'OBJECT'",
        f"{_type('event_id')} = 'VARCHAR'",
        f"length({_value('event_id')}) BETWEEN 1 AND {MAX_EVENT_ID_LENGTH}",
        f"{_type('ts')} = 'VARCHAR'",
        f"regexp_full_match({ts}, '{_TS_PATTERN}')",
        f"TRY_CAST({_naive_ts(ts)} AS TIMESTAMP) IS NOT NULL",
        f"({_type('schema_version')} IS NULL OR ({_type('schema_version')} IN {_INTEGER} "
        f"AND TRY_CAST({version} AS BIGINT) BETWEEN 1 AND {SCHEMA_VERSION}))",
    ))


def _naive_ts(ts: str) -> str:
    """The date-time part of a canonical ts (its UTC offset is zero by the pattern)."""
    return f"substr({ts}, 1, CASE WHEN substr({ts}, 20, 1) = '.' THEN 26 ELSE 19 END)"


def _kind() -> str:
    whens = " ".join(f"WHEN '{name}' THEN {code}" for code, name in enumerate(EVENT_TYPES))
    return f"CASE {_value('event_type')} {whens} END"


def typed_sql(raw_relation: str = "raw_lines", catalog_relation: str = "catalog") -> str:
    """The fast path over ``raw_relation``: every line once, with ``accepted`` and its ``EVENT_COLUMNS``.

    ``raw`` is carried for lines that are not accepted (the slow path needs them) and for accepted
    events of apps outside the catalog (they are written verbatim if kept).
    """
    paths = ", ".join("'$'" if p == "$" else f"'$.{p}'" for p in _PATHS)
    per_type = " ".join(
        f"WHEN '{name}' THEN " + " AND ".join(_rule_check(rule) for rule in rules)
        for name, rules in FIELD_RULES.items()
    )
    accepted = f"coalesce(plain AND {_common_checks()} AND CASE {_value('event_type')} {per_type} ELSE false END, false)"
    return f"""
WITH guarded AS (
    SELECT source, line, raw,
           starts_with(raw, '{{') AND NOT contains(raw, '\\') AND NOT contains(raw, '\ufffd')
           AND NOT regexp_matches(raw, '{_LENIENT_JSON}') AND json_valid(raw) AS plain
    FROM {raw_relation}
), parsed AS (
    SELECT source, line, raw, plain,
           CASE WHEN plain THEN json_type(raw, [{paths}]) END AS t,
           CASE WHEN plain THEN json_extract_string(raw, [{paths}]) END AS v,
           CASE WHEN plain THEN json_keys(raw) END AS keys
    FROM guarded
), checked AS (
    SELECT source, line, raw, t, v,
           {accepted} AND len(keys) = len(list_distinct(keys)) AS accepted
    FROM parsed
)
SELECT source, line, accepted,
       CASE WHEN accepted THEN {_value('event_id')} END AS event_id,
       CASE WHEN accepted THEN CAST({_kind()} AS TINYINT) END AS kind,
       CASE WHEN accepted THEN epoch_us(TRY_CAST({_naive_ts(_value('ts'))} AS TIMESTAMP)) END AS ts_us,
       CASE WHEN accepted THEN {_value('app_id')} END AS app_id,
       CASE WHEN accepted AND {_value('event_type')} <> 'prediction' THEN {_value('user_id')} END AS user_id,
       CASE WHEN accepted THEN coalesce(({_value('event_type')} = 'click' AND {_value('clicked')} = 'true')
            OR ({_value('event_type')} = 'conversion' AND {_value('converted')} = 'true'), false) END AS positive,
       CASE WHEN accepted THEN {_value('event_type')} = 'prediction' OR coalesce({_type('request_id')} = 'VARCHAR', false)
            END AS attributed,
       CASE WHEN accepted AND {_value('event_type')} = 'conversion' AND {_type('revenue')} IS NOT NULL
            THEN TRY_CAST({_value('revenue')} AS DOUBLE) WHEN accepted THEN 0.0 END AS revenue,
       CASE WHEN NOT accepted OR {_value('app_id')} NOT IN (SELECT app_id FROM {catalog_relation}) THEN raw END AS raw
FROM checked
"""


def events_sql(typed_relation: str = "typed", slow_relation: str = "slow_events") -> str:
    """Every valid event: the fast path's plus the reference validator's."""
    columns = ", ".join(EVENT_COLUMNS)
    return f"SELECT {columns} FROM {typed_relation} WHERE accepted UNION ALL SELECT {columns} FROM {slow_relation}"


def classified_sql(start_us: int, end_us: int, cut_us: int, events_relation: str = "events",
                   catalog_relation: str = "catalog") -> str:
    """Each valid event's outcome (first of OUTCOMES that applies, in the reference's order) and split."""
    return f"""
WITH numbered AS (
    SELECT e.*, c.app_id IS NOT NULL AS in_catalog,
           row_number() OVER (PARTITION BY e.event_id ORDER BY e.source, e.line) AS occurrence
    FROM {events_relation} e LEFT JOIN {catalog_relation} c ON e.app_id = c.app_id
)
SELECT source, line, kind, ts_us, app_id, user_id, positive, attributed, revenue,
       CASE WHEN occurrence > 1 THEN 'duplicate'
            WHEN ts_us < {start_us} THEN 'before_window'
            WHEN ts_us >= {end_us} THEN 'after_window'
            WHEN NOT in_catalog THEN 'kept'
            ELSE 'good' END AS outcome,
       CASE WHEN kind = {PREDICTION} AND starts_with(app_id, '{COLD_START_PREFIX}') THEN '{KEPT_REASONS[0]}'
            ELSE '{KEPT_REASONS[1]}' END AS kept_reason,
       ts_us >= {cut_us} AS holdout,
       CASE WHEN occurrence = 1 AND ts_us >= {start_us} AND ts_us < {end_us} AND NOT in_catalog THEN raw END AS raw
FROM numbered
"""


def outcome_counts_sql(relation: str = "classified") -> str:
    """Rows per (outcome, kept_reason, kind, holdout); kept_reason is NULL unless kept."""
    return (f"SELECT outcome, CASE WHEN outcome = 'kept' THEN kept_reason END AS kept_reason, kind, holdout, "
            f"count(*) AS n FROM {relation} GROUP BY 1, 2, 3, 4")


def users_sql(relation: str = "classified") -> str:
    """Distinct users among the good events."""
    return f"SELECT count(DISTINCT user_id) AS users FROM {relation} WHERE outcome = 'good' AND kind <> {PREDICTION}"


def positive_counts_sql(holdout: bool, relation: str = "classified") -> str:
    """Co-engagement positives of one split, and how many came from our own recommendations."""
    return (f"SELECT count(*) AS positives, coalesce(count_if(attributed), 0) AS attributed_positives FROM {relation} "
            f"WHERE outcome = 'good' AND holdout = {str(holdout).lower()} AND positive AND kind <> {PREDICTION}")


def interactions_sql(holdout: bool, use_attributed_clicks: bool, relation: str = "classified") -> str:
    """One row per (user_id, app_id) with a positive in the split, sorted by (user_id, app_id)."""
    attributed = "" if use_attributed_clicks else "AND NOT attributed"
    return f"""
SELECT user_id, app_id, count_if(kind = {CLICK}) AS clicks, count_if(kind = {CONVERSION}) AS conversions,
       min(ts_us) AS first_ts_us, max(ts_us) AS last_ts_us
FROM {relation}
WHERE outcome = 'good' AND holdout = {str(holdout).lower()} AND positive AND kind <> {PREDICTION} {attributed}
GROUP BY user_id, app_id
ORDER BY user_id, app_id
"""


def app_totals_sql(holdout: bool, relation: str = "classified") -> str:
    """Per app seen in the split (an impression or a conversion event): integer totals, sorted by app_id."""
    return f"""
SELECT app_id, count_if(kind = {CLICK}) AS impressions, count_if(kind = {CLICK} AND positive) AS clicks,
       count_if(kind = {CONVERSION} AND positive) AS conversions
FROM {relation}
WHERE outcome = 'good' AND holdout = {str(holdout).lower()} AND kind <> {PREDICTION}
GROUP BY app_id
ORDER BY app_id
"""


def revenue_rows_sql(holdout: bool, relation: str = "classified") -> str:
    """(app_id, revenue) of the split's conversions in arrival order: summed in that order, the floating-point
    totals are the reference's to the last bit."""
    return (f"SELECT app_id, revenue FROM {relation} WHERE outcome = 'good' AND holdout = {str(holdout).lower()} "
            f"AND kind = {CONVERSION} AND positive ORDER BY source, line")


def kept_rows_sql(relation: str = "classified") -> str:
    """The kept events, verbatim, in arrival order."""
    return f"SELECT kept_reason, source, line, raw FROM {relation} WHERE outcome = 'kept' ORDER BY source, line"


def event_row(event: PredictionEvent | ClickEvent | ConversionEvent) -> tuple:
    """A validated event as the fast path extracts it (``EVENT_COLUMNS`` from event_id to revenue)."""
    kind = EVENT_TYPES.index(event.event_type)
    ts_us = round(event.ts.timestamp() * 1_000_000)
    if kind == PREDICTION:
        return event.event_id, kind, ts_us, event.app_id, None, False, True, 0.0
    positive = event.clicked if kind == CLICK else event.converted
    revenue = event.revenue if kind == CONVERSION else 0.0
    return event.event_id, kind, ts_us, event.app_id, event.user_id, positive, bool(event.request_id), revenue

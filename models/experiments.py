"""A/B experiment state: which challenger gets how much traffic, and what happened so far.

One experiment at a time is ``active``: the champion (the registry's newest Approved version
when it started) against a challenger version at ``challenger_weight``. Serving reads
``open_experiments(uri).active()`` and routes with ``models.routing.pick_arm`` over
``Experiment.weights()``. Decisions (``evaluation/ab_decision.py``) are applied with
``Experiment.record``: ramp steps keep it active, ``promote`` completes it at 100%, ``end``
completes it without a winner, ``stop`` (a regression, or by hand) and ``rollback`` (a serving
guardrail broke) stop it at 0%. Every change is kept in ``history``.

Backends, picked by URI, behind one contract (``tests/models/test_experiments.py``):

- ``sqlite:///path/experiments.db``: the embedded default, ``<store>/experiments.db``;
- ``dynamodb://ab_experiments``: the seed's DynamoDB table (partition key ``experiment_id``;
  the seed's ``v1_weight``/``v2_weight`` attributes are written too, as champion/challenger
  shares). A pointer item ``experiment_id = "#active"`` names the active experiment, so
  "at most one active" is a conditional write and ``active()`` is two consistent GetItems.

Writes are optimistic: ``update`` succeeds only if nobody saved the experiment since it was
read (``revision``), so two daily jobs cannot both ramp it.
"""

from __future__ import annotations

import abc
import json
import os
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.sqlite_file import SQLiteFile, SQLiteFileError
from models import storage

ExperimentStatus = Literal["active", "completed", "stopped"]
CHAMPION_ARM = "champion"
CHALLENGER_ARM = "challenger"
DEFAULT_TABLE = "ab_experiments"
_ACTIVE_POINTER = "#active"
# The action that ends an experiment -> the status it ends in; every other action keeps it active.
_FINAL_STATUS: dict[str, ExperimentStatus] = {"promote": "completed", "end": "completed", "stop": "stopped",
                                              "rollback": "stopped"}


class ExperimentError(RuntimeError):
    """An experiment operation that cannot be done as asked."""


class ExperimentNotFound(ExperimentError, KeyError):
    def __init__(self, experiment_id: str, where: str):
        super().__init__(f"experiment '{experiment_id}' does not exist in {where}; `appsim ab status` lists experiments")

    def __str__(self) -> str:
        return self.args[0]


class ExperimentAlreadyActive(ExperimentError):
    def __init__(self, active_id: str):
        super().__init__(f"experiment '{active_id}' is already active; finish it first "
                         f"(`appsim ab promote` or `appsim ab stop`)")
        self.active_id = active_id


class ConcurrentUpdate(ExperimentError):
    def __init__(self, experiment_id: str):
        super().__init__(f"experiment '{experiment_id}' was changed by someone else since it was read; "
                         f"read it again and retry")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RampStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    action: str
    challenger_weight: float
    reason: str = ""
    numbers: dict[str, Any] = Field(default_factory=dict)


class Experiment(BaseModel):
    model_config = ConfigDict(frozen=True)

    experiment_id: str = Field(min_length=1, max_length=128)
    champion_version: int = Field(ge=1)
    challenger_version: int = Field(ge=1)
    challenger_weight: float = Field(ge=0.0, le=1.0)
    status: ExperimentStatus = "active"
    start_date: datetime
    end_date: datetime | None = None
    winning_criteria: str = "ctr_improvement > 5% with probability >= 95%"
    history: tuple[RampStep, ...] = ()
    revision: int = 0
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("experiment_id")
    @classmethod
    def _not_pointer(cls, value: str) -> str:
        if value.startswith("#"):
            raise ValueError("experiment ids may not start with '#' (reserved for the active pointer)")
        return value

    @classmethod
    def start(cls, champion_version: int, challenger_version: int, challenger_weight: float, *,
              at: datetime | None = None, end_date: datetime | None = None, experiment_id: str | None = None,
              reason: str = "started") -> "Experiment":
        if challenger_version == champion_version:
            raise ExperimentError(f"the challenger v{challenger_version} is the champion; pick another version")
        if not 0 < challenger_weight < 1:
            raise ExperimentError(f"--weight must be between 0 and 1 (exclusive), got {challenger_weight}; the seed starts at 0.1")
        moment = at or utcnow()
        name = experiment_id or f"v{champion_version}_vs_v{challenger_version}_{moment:%Y%m%d%H%M%S}"
        step = RampStep(at=moment, action="start", challenger_weight=challenger_weight, reason=reason)
        return cls(experiment_id=name, champion_version=champion_version, challenger_version=challenger_version,
                   challenger_weight=challenger_weight, start_date=moment, end_date=end_date, history=(step,),
                   updated_at=moment)

    def weights(self) -> dict[str, float]:
        """Routing weights in pick_arm order: champion first (the seed's v1), then the challenger."""
        return {CHAMPION_ARM: round(1.0 - self.challenger_weight, 6), CHALLENGER_ARM: self.challenger_weight}

    def version_of(self, arm: str) -> int:
        return self.champion_version if arm == CHAMPION_ARM else self.challenger_version

    @property
    def weight_changed_at(self) -> datetime:
        """When the challenger's current weight was set (the start or the last ramp step)."""
        return next(s.at for s in reversed(self.history) if s.action in ("start", "ramp"))

    def record(self, action: str, challenger_weight: float, reason: str, numbers: dict[str, Any] | None = None,
               at: datetime | None = None) -> "Experiment":
        """The experiment after a ramp/promote/stop/end step (status follows the action)."""
        if self.status != "active":
            raise ExperimentError(f"experiment '{self.experiment_id}' is {self.status}; only an active one can change")
        moment = at or utcnow()
        step = RampStep(at=moment, action=action, challenger_weight=challenger_weight, reason=reason,
                        numbers=numbers or {})
        return self.model_copy(update={
            "challenger_weight": challenger_weight,
            "status": _FINAL_STATUS.get(action, "active"),
            "end_date": moment if action in _FINAL_STATUS else self.end_date,
            "history": (*self.history, step),
            "updated_at": moment,
        })


class ExperimentStore(abc.ABC):
    """Where experiments live. ``update`` is conditional on the revision that was read."""

    uri: str

    @abc.abstractmethod
    def create(self, experiment: Experiment) -> Experiment:
        """Save a new active experiment; ``ExperimentAlreadyActive`` when another one is active."""

    @abc.abstractmethod
    def get(self, experiment_id: str) -> Experiment:
        """One experiment; ``ExperimentNotFound`` when there is none with that id."""

    @abc.abstractmethod
    def list(self) -> list[Experiment]:
        """Every experiment, newest start first."""

    @abc.abstractmethod
    def active(self) -> Experiment | None:
        """The active experiment, or None (what serving polls)."""

    @abc.abstractmethod
    def update(self, experiment: Experiment) -> Experiment:
        """Save a changed experiment read at ``experiment.revision``; returns it at the next revision."""


def default_uri(store: str) -> str:
    """``<store>/experiments.db`` for a local store; S3 stores keep experiments in DynamoDB."""
    if not storage.is_local(store):
        raise ExperimentError(f"the store {store} is not local; set backends.experiments to dynamodb://{DEFAULT_TABLE}")
    return f"sqlite://{storage.local_path(store) / 'experiments.db'}"


def open_experiments(uri: str, read_only: bool = False) -> ExperimentStore:
    """An experiment store from its URI: ``sqlite:///path/experiments.db`` or ``dynamodb://table``
    (``read_only``: for readers such as serving; the SQLite file is then never written)."""
    if uri.startswith("sqlite://"):
        return SQLiteExperiments(uri[len("sqlite://"):], read_only=read_only)
    if uri.startswith("dynamodb://"):
        return DynamoDBExperiments(uri[len("dynamodb://"):])
    raise ExperimentError(f"experiments URI '{uri}' is not understood; use sqlite:///path/experiments.db or "
                          f"dynamodb://{DEFAULT_TABLE}")


# --- SQLite -------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'completed', 'stopped')),
    start_date TEXT NOT NULL,
    revision INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_experiment ON experiments (status) WHERE status = 'active';
"""


class ExperimentsUnavailable(SQLiteFileError, ExperimentError):
    """experiments.db cannot be used (damaged, read-only for a write, locked)."""


class SQLiteExperiments(SQLiteFile, ExperimentStore):
    unusable_error = ExperimentsUnavailable

    def __init__(self, path: str | Path, read_only: bool = False):
        SQLiteFile.__init__(self, path, _SCHEMA, read_only=read_only)

    def create(self, experiment: Experiment) -> Experiment:
        saved = experiment.model_copy(update={"revision": 1})
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                active = conn.execute("SELECT experiment_id FROM experiments WHERE status = 'active'").fetchone()
                if active:
                    raise ExperimentAlreadyActive(active[0])
                if conn.execute("SELECT 1 FROM experiments WHERE experiment_id = ?", (experiment.experiment_id,)).fetchone():
                    raise ExperimentError(f"experiment '{experiment.experiment_id}' already exists; pick another id")
                conn.execute("INSERT INTO experiments VALUES (?, ?, ?, ?, ?)",
                             (saved.experiment_id, saved.status, saved.start_date.isoformat(), saved.revision,
                              saved.model_dump_json()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return saved

    def get(self, experiment_id: str) -> Experiment:
        with self._connect() as conn:
            row = conn.execute("SELECT data FROM experiments WHERE experiment_id = ?", (experiment_id,)).fetchone()
        if row is None:
            raise ExperimentNotFound(experiment_id, self.uri)
        return Experiment.model_validate_json(row[0])

    def list(self) -> list[Experiment]:
        with self._connect() as conn:
            rows = conn.execute("SELECT data FROM experiments ORDER BY start_date DESC, experiment_id DESC").fetchall()
        return [Experiment.model_validate_json(row[0]) for row in rows]

    def active(self) -> Experiment | None:
        with self._connect() as conn:
            row = conn.execute("SELECT data FROM experiments WHERE status = 'active'").fetchone()
        return None if row is None else Experiment.model_validate_json(row[0])

    def update(self, experiment: Experiment) -> Experiment:
        saved = experiment.model_copy(update={"revision": experiment.revision + 1})
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE experiments SET status = ?, revision = ?, data = ? WHERE experiment_id = ? AND revision = ?",
                (saved.status, saved.revision, saved.model_dump_json(), saved.experiment_id, experiment.revision))
        if cursor.rowcount != 1:
            self.get(experiment.experiment_id)  # raises ExperimentNotFound when it is missing
            raise ConcurrentUpdate(experiment.experiment_id)
        return saved


# --- DynamoDB -----------------------------------------------------------------------------------
class DynamoDBExperiments(ExperimentStore):
    """The seed's ``ab_experiments`` table (boto3; ``AWS_ENDPOINT_URL`` points it elsewhere, e.g. moto)."""

    def __init__(self, table: str = DEFAULT_TABLE, client: Any = None, region: str | None = None):
        import boto3

        self.table = table
        self.uri = f"dynamodb://{table}"
        self.client = client or boto3.client(
            "dynamodb", region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")

    def ensure_table(self) -> None:
        """Create the table (on-demand capacity) when it does not exist yet."""
        try:
            self.client.describe_table(TableName=self.table)
        except self.client.exceptions.ResourceNotFoundException:
            self.client.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": "experiment_id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "experiment_id", "AttributeType": "S"}])
            self.client.get_waiter("table_exists").wait(TableName=self.table)

    @staticmethod
    def _item(experiment: Experiment) -> dict[str, Any]:
        weights = experiment.weights()
        item = {
            "experiment_id": {"S": experiment.experiment_id},
            "status": {"S": experiment.status},
            "champion_version": {"N": str(experiment.champion_version)},
            "challenger_version": {"N": str(experiment.challenger_version)},
            "challenger_weight": {"N": str(Decimal(str(experiment.challenger_weight)))},
            "v1_weight": {"N": str(Decimal(str(weights[CHAMPION_ARM])))},
            "v2_weight": {"N": str(Decimal(str(weights[CHALLENGER_ARM])))},
            "start_date": {"S": experiment.start_date.isoformat()},
            "winning_criteria": {"S": experiment.winning_criteria},
            "history": {"S": json.dumps([s.model_dump(mode="json") for s in experiment.history])},
            "revision": {"N": str(experiment.revision)},
            "updated_at": {"S": experiment.updated_at.isoformat()},
        }
        if experiment.end_date is not None:
            item["end_date"] = {"S": experiment.end_date.isoformat()}
        return item

    @staticmethod
    def _experiment(item: dict[str, Any]) -> Experiment:
        return Experiment(
            experiment_id=item["experiment_id"]["S"],
            status=item["status"]["S"],
            champion_version=int(item["champion_version"]["N"]),
            challenger_version=int(item["challenger_version"]["N"]),
            challenger_weight=float(item["challenger_weight"]["N"]),
            start_date=item["start_date"]["S"],
            end_date=item["end_date"]["S"] if "end_date" in item else None,
            winning_criteria=item["winning_criteria"]["S"],
            history=json.loads(item["history"]["S"]),
            revision=int(item["revision"]["N"]),
            updated_at=item["updated_at"]["S"],
        )

    def _pointer_key(self) -> dict[str, Any]:
        return {"experiment_id": {"S": _ACTIVE_POINTER}}

    def _cancelled(self, error: Exception) -> list[str]:
        return [r.get("Code", "") for r in getattr(error, "response", {}).get("CancellationReasons", [])]

    def create(self, experiment: Experiment) -> Experiment:
        saved = experiment.model_copy(update={"revision": 1})
        try:
            self.client.transact_write_items(TransactItems=[
                {"Put": {"TableName": self.table,
                         "Item": {**self._pointer_key(), "active_experiment_id": {"S": saved.experiment_id}},
                         "ConditionExpression": "attribute_not_exists(experiment_id)"}},
                {"Put": {"TableName": self.table, "Item": self._item(saved),
                         "ConditionExpression": "attribute_not_exists(experiment_id)"}},
            ])
        except self.client.exceptions.TransactionCanceledException as error:
            reasons = self._cancelled(error)
            if reasons and reasons[0] == "ConditionalCheckFailed":
                active = self.active()
                raise ExperimentAlreadyActive(active.experiment_id if active else "?") from None
            raise ExperimentError(f"experiment '{experiment.experiment_id}' already exists; pick another id") from None
        return saved

    def get(self, experiment_id: str) -> Experiment:
        response = self.client.get_item(TableName=self.table, Key={"experiment_id": {"S": experiment_id}},
                                        ConsistentRead=True)
        if "Item" not in response or experiment_id == _ACTIVE_POINTER:
            raise ExperimentNotFound(experiment_id, self.uri)
        return self._experiment(response["Item"])

    def list(self) -> list[Experiment]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        while True:
            page = self.client.scan(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        found = [self._experiment(i) for i in items if i["experiment_id"]["S"] != _ACTIVE_POINTER]
        return sorted(found, key=lambda e: (e.start_date, e.experiment_id), reverse=True)

    def active(self) -> Experiment | None:
        pointer = self.client.get_item(TableName=self.table, Key=self._pointer_key(), ConsistentRead=True).get("Item")
        return None if pointer is None else self.get(pointer["active_experiment_id"]["S"])

    def update(self, experiment: Experiment) -> Experiment:
        saved = experiment.model_copy(update={"revision": experiment.revision + 1})
        put = {"Put": {"TableName": self.table, "Item": self._item(saved),
                       "ConditionExpression": "revision = :read",
                       "ExpressionAttributeValues": {":read": {"N": str(experiment.revision)}}}}
        items = [put]
        if saved.status != "active":
            items.append({"Delete": {"TableName": self.table, "Key": self._pointer_key(),
                                     "ConditionExpression": "active_experiment_id = :id",
                                     "ExpressionAttributeValues": {":id": {"S": saved.experiment_id}}}})
        try:
            self.client.transact_write_items(TransactItems=items)
        except self.client.exceptions.TransactionCanceledException:
            self.get(experiment.experiment_id)
            raise ConcurrentUpdate(experiment.experiment_id) from None
        return saved

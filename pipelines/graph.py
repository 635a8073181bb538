"""The retraining graph as data: the one definition the local runner and the SageMaker
pipeline builder both execute, so the two cannot drift (a test compares them).

    PrepareFeedback -> TrainEmbeddings -> EvaluateCandidate -> CheckImprovement
        CheckImprovement true  -> RegisterCandidate  (Approved, or PendingManualApproval)
        CheckImprovement false -> RegisterRejected   (recorded as Rejected; the run still succeeds)

PrepareFeedback's job depends on ``prepare_engine`` (``steps(prepare_engine)``): steps.prepare
(DuckDB) or steps.prepare_spark_job (a PySparkProcessor on SageMaker); a build parameter, not a run one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from models import layout
from pipelines.config import PipelineParameters

StepKind = Literal["processing", "training", "condition", "register"]


@dataclass(frozen=True)
class StepSpec:
    name: str
    kind: StepKind
    depends_on: tuple[str, ...]
    parameters: tuple[str, ...] = ()
    entry_module: str | None = None  # the job entry point (`python -m <module>`)


@dataclass(frozen=True)
class ConditionSpec:
    """CheckImprovement: a JSON value of a step's report compared with a constant."""

    step: str
    report_file: str
    json_path: str
    equals: bool
    if_true: tuple[str, ...]
    if_false: tuple[str, ...]


# Parameters that are not model hyper-parameters but say where the data is.
DATA_PARAMETERS: tuple[str, ...] = ("feedback_uri", "catalog_uri")
# Parameters that choose the graph's jobs rather than feed them: on SageMaker the spark engine is
# another step type (PySparkProcessor, a cluster of instances), so a started execution cannot
# switch it; the definition is built for one engine and these are not execution parameters.
BUILD_PARAMETERS: tuple[str, ...] = ("prepare_engine",)
PARAMETERS: tuple[str, ...] = DATA_PARAMETERS + tuple(
    name for name in PipelineParameters.model_fields if name not in BUILD_PARAMETERS)
# PrepareFeedback's job entry point for each prepare_engine.
PREPARE_ENTRY_MODULES: dict[str, str] = {"duckdb": "steps.prepare", "spark": "steps.prepare_spark_job"}

STEPS: tuple[StepSpec, ...] = (
    StepSpec(
        "PrepareFeedback", "processing", (),
        ("feedback_uri", "catalog_uri", "window_end", "window_days", "holdout_fraction",
         "max_bad_fraction", "use_attributed_clicks"),
        "steps.prepare",
    ),
    StepSpec(
        "TrainEmbeddings", "training", ("PrepareFeedback",),
        ("catalog_uri", "embedding_dim", "seed", "index_type", "exact_index_max_apps"),
        "steps.train",
    ),
    StepSpec(
        "EvaluateCandidate", "processing", ("PrepareFeedback", "TrainEmbeddings"),
        ("min_relative_improvement", "bootstrap_samples", "seed", "approval_status"),
        "steps.evaluate",
    ),
    StepSpec("CheckImprovement", "condition", ("EvaluateCandidate",)),
    StepSpec("RegisterCandidate", "register", ("CheckImprovement",), ("approval_status",)),
    StepSpec("RegisterRejected", "register", ("CheckImprovement",)),
)

CONDITION = ConditionSpec(
    step="EvaluateCandidate",
    report_file=layout.EVALUATION_REPORT,
    json_path="improved",
    equals=True,
    if_true=("RegisterCandidate",),
    if_false=("RegisterRejected",),
)


def steps(prepare_engine: str = "duckdb") -> tuple[StepSpec, ...]:
    """The graph with PrepareFeedback running on ``prepare_engine``."""
    if prepare_engine not in PREPARE_ENTRY_MODULES:
        raise KeyError(f"no prepare engine {prepare_engine}; engines are {', '.join(PREPARE_ENTRY_MODULES)}")
    module = PREPARE_ENTRY_MODULES[prepare_engine]
    return tuple(replace(spec, entry_module=module) if spec.name == "PrepareFeedback" else spec for spec in STEPS)


def step(name: str, prepare_engine: str = "duckdb") -> StepSpec:
    for spec in steps(prepare_engine):
        if spec.name == name:
            return spec
    raise KeyError(f"no step named {name}; steps are {', '.join(s.name for s in STEPS)}")


def edges() -> set[tuple[str, str]]:
    """(upstream, downstream) pairs, the shape a test compares with the SageMaker definition."""
    return {(dep, spec.name) for spec in STEPS for dep in spec.depends_on}

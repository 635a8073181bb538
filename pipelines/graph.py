"""The retraining graph as data: the one definition the local runner and the SageMaker
pipeline builder both execute, so the two cannot drift (tests compare them, and prove that a
parameter added to a step here reaches both).

Each job step says what both runners need: the pipeline parameters it takes, the data it reads
(the store's, or an upstream step's output), the folder it writes, its SageMaker job entry
point and the module whose pure ``run(*inputs, folder, **parameters)`` the local runner calls.

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
    parameters: tuple[str, ...] = ()  # pipeline parameters (run()'s keywords; DATA_PARAMETERS are inputs)
    entry_module: str | None = None   # the SageMaker job entry point (`python -m <module>`)
    run_module: str | None = None     # the local runner calls <module>.run(*inputs, folder_uri, **parameters)
    inputs: tuple[str, ...] = ()      # what run() reads, in order: DATA_PARAMETERS or an upstream step's output
    folder: str = ""                  # where it writes, in both runners: <store>/runs/<run id>/<folder>/
    output: tuple[str, str] | None = None  # (name, file in the folder) by which later steps read what it wrote


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
        entry_module="steps.prepare", run_module="steps.prepare", inputs=("feedback_uri", "catalog_uri"),
        folder="prepare", output=("prepared_uri", ""),
    ),
    StepSpec(
        "TrainEmbeddings", "training", ("PrepareFeedback",),
        ("catalog_uri", "embedding_dim", "seed", "index_type", "exact_index_max_apps"),
        entry_module="steps.train", run_module="steps.train", inputs=("prepared_uri", "catalog_uri"),
        folder="train", output=("artifact_uri", layout.MODEL_TARBALL),
    ),
    StepSpec(
        "EvaluateCandidate", "processing", ("PrepareFeedback", "TrainEmbeddings"),
        ("min_relative_improvement", "bootstrap_samples", "seed", "approval_status"),
        entry_module="steps.evaluate", run_module="steps.evaluate", inputs=("prepared_uri", "artifact_uri"),
        folder="evaluate", output=("evaluation_uri", layout.EVALUATION_REPORT),
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


def jobs(prepare_engine: str = "duckdb") -> tuple[StepSpec, ...]:
    """The steps that run a job (processing or training), in order: what both runners execute
    before the condition."""
    return tuple(spec for spec in steps(prepare_engine) if spec.kind in ("processing", "training"))


def run_keywords(spec: StepSpec) -> tuple[str, ...]:
    """The parameters a job takes as keywords (the data parameters are among its inputs)."""
    return tuple(name for name in spec.parameters if name not in DATA_PARAMETERS)


def edges() -> set[tuple[str, str]]:
    """(upstream, downstream) pairs, the shape a test compares with the SageMaker definition."""
    return {(dep, spec.name) for spec in STEPS for dep in spec.depends_on}

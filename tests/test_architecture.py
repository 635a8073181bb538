"""The shape of the code, held by tests so it cannot quietly decay (docs/architecture.md, "Folders").

- No import cycles among the project's modules (function-level imports included).
- Layers: ``models`` <- ``evaluation`` <- ``steps`` <- ``serving``, ``pipelines``; nothing imports
  ``pipelines`` but ``pipelines``; nothing imports ``serving`` but ``serving`` and ``pipelines``.
- The SageMaker SDK only in ``pipelines/sagemaker_pipeline.py``; boto3 only where the AWS backends live.

The graph is read with ``ast`` (tests/import_graph.py): nothing is imported, so these run in well
under a second.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from tests.import_graph import Import, cycles, graph, imports

ROOT = Path(__file__).resolve().parent.parent

# What each package may import besides itself. DESIGN.md: dependencies point one way.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "models": frozenset(),
    "evaluation": frozenset({"models"}),
    "steps": frozenset({"models", "evaluation"}),
    "serving": frozenset({"models", "evaluation", "steps"}),
    "pipelines": frozenset({"models", "evaluation", "steps", "serving"}),
}
# Upward edges carried on purpose until the change that removes them is merged; each names it.
# serving/cli.py reads pipeline.yaml for `appsim serve`: the cli-package change moves `serve` into
# pipelines/cli/ (which calls serving), and the lead empties this set when merging it.
KNOWN_UPWARD_EDGES: frozenset[tuple[str, str]] = frozenset()

# The SageMaker SDK is 1.2 GB and an extra: the embedded mode and the serving container run without it.
SAGEMAKER_SDK_MODULES = frozenset({"pipelines.sagemaker_pipeline"})
# boto3/botocore where a module's job is talking to an AWS service (a backend or an AWS job).
AWS_MODULES = frozenset({
    "models.registry_sagemaker",   # registry backend: SageMaker Model Registry
    "models.experiments",          # experiment store backend: DynamoDB
    "models.notifications",        # SNS
    "models.pseudonym",            # the pseudonym key from Secrets Manager
    "serving.sinks_aws",           # feedback sinks: Kinesis Data Streams, Firehose
    "pipelines.aws",               # deploy, start, watch and schedule the SageMaker pipeline
    "pipelines.sagemaker_pipeline",  # the SDK's PipelineSession runs on a boto3 session
    "pipelines.batch_transform",   # bulk neighbours with SageMaker Batch Transform
    "pipelines.kinesis_source",    # the Kinesis -> feedback folder ingestion job
    "pipelines.cli.monitoring",    # `appsim monitoring apply`'s CloudWatch client
    "pipelines.rollout",           # the `cloudwatch` guardrail source: CloudWatch GetMetricData
})
AWS_SDKS = frozenset({"boto3", "botocore"})


@cache
def _project_imports() -> list[Import]:
    return imports(ROOT)


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def layering_violations(found: list[Import], known_upward: frozenset[tuple[str, str]] = KNOWN_UPWARD_EDGES) -> list[str]:
    """One message per import that breaks a rule: the rule, where, and the fix."""
    problems = []
    for edge in found:
        where = f"{edge.importer} (line {edge.line}) imports {edge.imported}"
        if edge.external:
            if edge.imported == "sagemaker" and edge.importer not in SAGEMAKER_SDK_MODULES:
                problems.append(f"{where}: the SageMaker SDK is imported by pipelines/sagemaker_pipeline.py only (it is "
                                "1.2 GB and optional); build what needs it there, or use boto3 in an AWS module")
            elif edge.imported in AWS_SDKS and edge.importer not in AWS_MODULES:
                problems.append(f"{where}: boto3 lives in the AWS backends and jobs only ({', '.join(sorted(AWS_MODULES))}); "
                                "put the AWS call behind one of them (or add a new backend module to AWS_MODULES, "
                                "tests/test_architecture.py, saying what AWS service it talks to)")
            continue
        source, target = _package(edge.importer), _package(edge.imported)
        if source == target or target in MAY_IMPORT.get(source, frozenset()):
            continue
        if (edge.importer, edge.imported) in known_upward:
            continue
        allowed = ", ".join(sorted(MAY_IMPORT.get(source, frozenset()))) or "nothing outside itself"
        problems.append(f"{where}: {source} may import {allowed} (dependencies point one way: models <- evaluation "
                        f"<- steps <- serving, pipelines); move what {edge.importer} needs from {edge.imported} down "
                        f"into {source} or a lower package, or have {target} call {source} instead")
    return problems


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_no_import_cycles():
    found = cycles(graph(_project_imports()))
    assert not found, "import cycles (a module needs one that needs it back): " + "; ".join(
        " -> ".join(cycle) for cycle in found) + ". Fix: move what both need into a module both import " \
        "(a contract module), or move the factory that picks a backend out of the contract's module"


def test_the_cycle_finder_sees_a_cycle_closed_by_a_function_level_import(tmp_path):
    root = _write(tmp_path, {
        "models/__init__.py": "",
        "models/contract.py": "def open_backend():\n    from models import backend\n    return backend.Backend()\n",
        "models/backend.py": "from models.contract import open_backend\n\nclass Backend:\n    pass\n",
        "models/leaf.py": "from models import contract\n",
    })
    assert cycles(graph(imports(root, packages=("models",)))) == [["models.backend", "models.contract", "models.backend"]]


def test_the_layers_hold():
    problems = layering_violations(_project_imports())
    assert not problems, "\n".join(problems)


def test_the_known_upward_edges_still_exist():
    """An allowance nobody needs any more is removed, so it cannot hide a new edge later."""
    edges = {(e.importer, e.imported) for e in _project_imports() if not e.external}
    stale = KNOWN_UPWARD_EDGES - edges
    assert not stale, f"KNOWN_UPWARD_EDGES lists edges the code no longer has: {sorted(stale)}; delete them"


@pytest.mark.parametrize("module, line, rule", [
    ("models/features.py", "from pipelines.config import PipelineConfig\n", "models may import nothing outside itself"),
    ("steps/train.py", "def main():\n    from serving import metrics\n", "steps may import evaluation, models"),
    ("serving/app.py", "import pipelines.graph\n", "serving may import evaluation, models, steps"),
    ("evaluation/ab.py", "import sagemaker\n", "SageMaker SDK is imported by pipelines/sagemaker_pipeline.py only"),
    ("steps/evaluate.py", "from botocore.exceptions import ClientError\n", "boto3 lives in the AWS backends"),
])
def test_a_broken_rule_is_named_with_its_fix(tmp_path, module, line, rule):
    files = {f"{package}/__init__.py": "" for package in MAY_IMPORT}
    files |= {"pipelines/config.py": "", "pipelines/graph.py": "", "serving/metrics.py": "", module: line}
    problems = layering_violations(imports(_write(tmp_path, files)))
    assert len(problems) == 1 and rule in problems[0] and module.replace("/", ".")[:-3] in problems[0], problems

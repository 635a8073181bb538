"""One graph, two runners: every parameter pipelines/graph.py declares for a step reaches both
the local runner's call of the step and the SageMaker definition's job (container arguments
for a processing job, hyperparameters for a training job), including one added to the table.

The table is copied with a parameter added to each job (an existing pipeline parameter the
step does not take today), and both runners are driven from the copy: the local runner runs
the real steps on a small simulated store, the definition is built offline with the pinned SDK.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from models import storage
from pipelines import graph
from pipelines.config import load_config
from pipelines.runner import LocalRunner
from pipelines.simulators.marketplace import simulate
from tests.conftest import set_aws_env

END = datetime(2026, 11, 2, tzinfo=timezone.utc)
# A parameter each job gains in the copied table: one it does not take today.
ADDED = {"PrepareFeedback": "bootstrap_samples", "TrainEmbeddings": "min_relative_improvement",
         "EvaluateCandidate": "window_days"}


@pytest.fixture(scope="module")
def grown_table() -> tuple[graph.StepSpec, ...]:
    table = tuple(replace(spec, parameters=spec.parameters + (ADDED[spec.name],)) if spec.name in ADDED else spec
                  for spec in graph.STEPS)
    for spec in table:
        if spec.name in ADDED:
            assert ADDED[spec.name] not in graph.step(spec.name).parameters  # really added
    return table


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    store = storage.normalize(tmp_path_factory.mktemp("store"))
    simulate(store, apps=150, users=400, days=7, events_per_day=1200, seed=3, fault_rate=0.0, end=END)
    return load_config(None, store).with_overrides({"window_end": END.isoformat(), "window_days": 7,
                                                    "bootstrap_samples": 50, "embedding_dim": 8})


def test_every_declared_parameter_reaches_the_local_runner(config, grown_table, monkeypatch):
    monkeypatch.setattr(graph, "STEPS", grown_table)
    calls: dict[str, tuple[tuple, dict]] = {}
    for spec in graph.jobs():
        module = __import__(spec.run_module, fromlist=["run"])
        real = module.run

        def recording(*args: Any, _name: str = spec.name, _real: Any = real, **kwargs: Any) -> Any:
            calls[_name] = (args, kwargs)
            accepted = inspect.signature(_real).parameters
            return _real(*args, **{k: v for k, v in kwargs.items() if k in accepted})  # the added one is not

        monkeypatch.setattr(module, "run", recording)

    record = LocalRunner(config).run()

    assert record.status == "succeeded" and set(calls) == set(ADDED)
    values = {**config.parameters.model_dump(), "window_end": END,
              "feedback_uri": storage.join(config.store, "feedback"),
              "catalog_uri": storage.join(config.store, "catalog", "apps.parquet")}
    for spec in graph.jobs():
        args, kwargs = calls[spec.name]
        for name in spec.parameters:
            if name in graph.DATA_PARAMETERS:
                assert values[name] in args, (spec.name, name, args)
            else:
                assert name in kwargs and kwargs[name] == values[name], (spec.name, name, kwargs)
        assert kwargs[ADDED[spec.name]] == values[ADDED[spec.name]]


def test_every_declared_parameter_reaches_the_sagemaker_definition(config, grown_table, monkeypatch, tmp_path):
    from pipelines.sagemaker_pipeline import definition
    from pipelines.sagemaker_target import Target

    set_aws_env(monkeypatch, tmp_path)
    monkeypatch.setattr(graph, "STEPS", grown_table)
    built = definition(config, Target.from_config(config, preview=True))
    steps = {step["Name"]: step for step in built["Steps"]}
    for spec in graph.jobs():
        arguments = steps[spec.name]["Arguments"]
        if spec.kind == "training":
            passed = {name: json.dumps(value) for name, value in arguments["HyperParameters"].items()}
        else:
            container = arguments["AppSpecification"]["ContainerArguments"]
            passed = {flag[2:].replace("-", "_"): json.dumps(value)
                      for flag, value in zip(container, container[1:]) if str(flag).startswith("--")}
        for name in graph.run_keywords(spec):
            assert name in passed and f"Parameters.{name}" in passed[name], (spec.name, name, passed.get(name))
        for name in set(spec.parameters) & set(graph.DATA_PARAMETERS):  # an input channel or --feedback
            assert f"Parameters.{name}" in json.dumps(arguments), (spec.name, name)
        assert ADDED[spec.name] in passed

"""`appsim registry`: the list as people read it, and approving what the gate rejected."""

import json

import pytest

from models.registry_backends import open_registry
from tests.pipelines.cli.runner import run


@pytest.fixture
def store(tmp_path):
    registry = open_registry(f"sqlite://{tmp_path / 'registry.db'}")
    registry.register("file:///m/v1/model.tar.gz", "Approved", {"recall_at_10": 0.31, "relative_improvement": 3.8971}, {})
    registry.register("file:///m/v2/model.tar.gz", "Rejected", {"recall_at_10": 0.3, "relative_improvement": 0.0123}, {},
                      status_reason="recall@10 +1.2% is below the 3% threshold")
    return tmp_path


def test_list_spells_the_improvement_as_retrain_does(store):
    printed = run("registry", "list", "--store", store)
    assert "+389.7%" in printed and "+1.2%" in printed and "3.8971" not in printed
    listed = json.loads(run("registry", "list", "--json", "--store", store))
    assert listed[1]["metrics"]["relative_improvement"] == 3.8971  # JSON keeps the number


def test_approving_a_rejected_version_needs_force_and_says_why_it_was_rejected(store):
    refused = run("registry", "approve", 2, "--store", store, expect=2)
    assert "error: version 2 is Rejected" in refused and "below the 3% threshold" in refused and "--force" in refused
    assert open_registry(f"sqlite://{store / 'registry.db'}").get(2).status == "Rejected"
    printed = run("registry", "approve", 2, "--force", "--store", store)
    assert "warning: approving version 2 although it was rejected: recall@10 +1.2%" in printed
    run("registry", "reject", 2, "--store", store)
    forced = json.loads(run("registry", "approve", 2, "--force", "--json", "--store", store, stdout_only=True))
    assert forced["status"] == "Approved" and forced["champion_version"] == 2


def test_approving_an_older_version_says_the_champion_stays(store):
    registry = open_registry(f"sqlite://{store / 'registry.db'}")
    registry.register("file:///m/v3/model.tar.gz", "Approved", {"recall_at_10": 0.33}, {})
    registry.set_status(1, "Rejected", "by hand")
    printed = run("registry", "approve", 1, "--force", "--store", store)
    assert "version 1 is now Approved; the champion stays v3" in printed

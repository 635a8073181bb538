"""`appsim monitoring`: the alarms and dashboards, offline (--dry-run) and as rules."""

import json


from tests.pipelines.cli.runner import run


# --- monitoring ---------------------------------------------------------------------------------
def test_monitoring_dry_run_and_rules():
    planned = json.loads(run("monitoring", "apply", "--dry-run", "--dimension", "service=prod", "--alarm-topic", "arn:x"))
    requests = planned["alarms"]
    assert {r["AlarmName"] for r in requests} >= {"appsim-HighErrorRate", "appsim-ZeroTraffic"}
    assert all(r["AlarmActions"] == ["arn:x"] for r in requests)
    charts = [w for w in planned["dashboard"]["body"]["widgets"] if w["type"] == "metric"]
    rows = [m for w in charts for m in w["properties"]["metrics"] if isinstance(m[0], str)]
    assert rows and all(dict(zip(m[2:-1:2], m[3:-1:2]))["service"] == "prod" for m in rows)
    assert "histogram_quantile(0.99" in run("monitoring", "rules")
    assert "NAME=VALUE" in run("monitoring", "apply", "--dry-run", "--dimension", "oops", expect=2)



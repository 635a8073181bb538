"""What an on-call engineer reads in an alarm: the condition and the runbook section, nothing else."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.monitoring import ALARMS, DASHBOARD, cloudwatch_alarms, grafana_dashboard, prometheus_rules
from serving import metric_names

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"


def test_every_alarm_names_its_runbook_section_and_no_design_note():
    sections = set(re.findall(r"^### (.+)$", RUNBOOK.read_text(), flags=re.M))
    texts = [r["AlarmDescription"] for r in cloudwatch_alarms()] + \
            [rule["annotations"]["summary"] for group in prometheus_rules()["groups"] for rule in group["rules"]] + \
            [chart.text for panel in DASHBOARD for chart in panel.charts]
    for text in texts:
        assert not re.search(r"\bseed\b", text, flags=re.I), text
    for alarm in ALARMS:
        (section,) = re.findall(r"\(runbook, (\w+)\)", alarm.description)
        assert section == alarm.name and any(section in title for title in sections), (alarm.name, sorted(sections))


def test_alarms_read_the_series_serving_declares():
    declared = {value for name, value in vars(metric_names).items() if name.isupper()}
    exposed = declared | {metric_names.total(n) for n in declared} | {metric_names.bucket(n) for n in declared}
    for alarm in ALARMS:
        assert {metric.name for metric in alarm.metrics} <= exposed, alarm.name
        assert set(re.findall(r"appsim_\w+", alarm.prometheus)) <= exposed, alarm.prometheus


def test_the_committed_grafana_dashboard_is_the_generated_one():
    committed = json.loads((ROOT / "infra" / "grafana" / "appsim-dashboard.json").read_text())
    assert committed == grafana_dashboard(), \
        "infra/grafana/appsim-dashboard.json is stale: regenerate it with `appsim monitoring grafana`"

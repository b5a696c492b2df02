"""The shipped operations files: the alert rules are valid and name series the service
exports; the Grafana dashboard's panels query series the service exports; the systemd
units call options the CLI has, with the exit codes it documents."""

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from freshsid.serve.metrics import RELOAD_OUTCOMES, ServiceMetrics
from freshsid.serve.ops import OUTCOMES, STATES

from clirun import invoke

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def exported_series(tmp_path):
    names = set()
    for family in ServiceMetrics(tmp_path).registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":  # a labelled counter has no sample before its first count
            names.add(f"{family.name}_total")
    return names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_alert_rules():
    done = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rules_name_series_the_service_exports(tmp_path):
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    listed = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(listed) >= 8 and all({"alert", "expr", "annotations"} <= set(rule) for rule in listed)
    used = {name for rule in listed for name in re.findall(r"freshsid_[a-z_]+", rule["expr"])}
    series = exported_series(tmp_path)
    assert used and used <= series, used - series
    outcomes = {o for rule in listed for o in re.findall(r'outcome="([a-z_]+)"', rule["expr"])}
    assert outcomes <= set(STATES) | set(RELOAD_OUTCOMES)


def test_every_grafana_panel_queries_series_the_service_exports(tmp_path):
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    series = exported_series(tmp_path)
    for panel in panels:
        exprs = [target["expr"] for target in panel["targets"]]
        named = {name for expr in exprs for name in re.findall(r"freshsid_[a-z_]+", expr)}
        assert exprs and named and named <= series, (panel["title"], named - series)
        labels = {value for expr in exprs for value in re.findall(r'outcome="([a-z_]+)"', expr)}
        assert labels <= set(STATES) | set(RELOAD_OUTCOMES)
    queried = " ".join(target["expr"] for panel in panels for target in panel["targets"])
    for watched in ("freshsid_requests_total", "freshsid_request_duration_seconds_bucket", "freshsid_batch_size",
                    "freshsid_release_age_seconds", "freshsid_release_info", "freshsid_reloads_total",
                    "freshsid_last_refresh_outcome", "freshsid_uncoded_history_share", "freshsid_recommended_items"):
        assert watched in queried, watched
    assert len({panel["id"] for panel in panels}) == len(panels)


def test_the_systemd_units_call_the_cli_as_documented():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "freshsid-refresh.service")
    command = unit["Service"]["ExecStart"].replace("\\\n", " ")
    assert " refresh " in command and "--if-due" in command
    assert unit["Service"]["SuccessExitStatus"] == str(OUTCOMES["not_due"])
    help_text = invoke("refresh", "--help").stdout
    for flag in re.findall(r"--[a-z-]+", command):
        assert flag in help_text, flag
    assert "release prune" in unit["Service"]["ExecStartPost"]
    # the cpu preset's warm recipe continues the SID build a release carries: the unit says how to create one
    assert "--preset cpu" in command and "--embeddings" in (DEPLOY / "freshsid-refresh.service").read_text()
    assert "--embeddings" in invoke("release", "create", "--help").stdout
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(DEPLOY / "freshsid-refresh.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"

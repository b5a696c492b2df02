"""The shipped operations files: the alert rules are valid and name series the service
exports; the systemd units call options the CLI has, with the exit codes it documents."""

import configparser
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

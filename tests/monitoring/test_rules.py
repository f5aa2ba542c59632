"""The PrometheusRule's groups as promtool sees them: `check rules` and the unit tests in
rules_test.yaml (synthetic series for every alert and the main recording rules)."""

import re
import shutil
from pathlib import Path

import pytest
import yaml
from monitoring_support import PROMETHEUS_RULE, prometheus_rule, promtool, write_rules_file

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "rules_test.yaml"

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed: `make prometheus` installs it (make test does)",
)


def alerts() -> dict[str, dict]:
    return {
        rule["alert"]: rule
        for group in prometheus_rule()["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def render_label_templates(text: str, labels: dict[str, str]) -> str:
    """What Prometheus renders for annotations that only use `{{ $labels.<name> }}`."""
    rendered = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)
    assert "{{" not in rendered, f"template beyond $labels in an annotation: {text}"
    return rendered


def unit_tests_with_annotations() -> dict:
    """rules_test.yaml with each expected alert's annotations rendered from the rule itself."""
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    rules = alerts()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            annotations = rules[case["alertname"]].get("annotations", {})
            for alert in case["exp_alerts"]:
                alert["exp_annotations"] = {
                    key: render_label_templates(text, alert["exp_labels"])
                    for key, text in annotations.items()
                }
    return doc


def test_rules_file_passes_promtool_check(tmp_path):
    rules = write_rules_file(tmp_path / "modelserve-rules.yaml")
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_rule_is_a_valid_custom_resource():
    rule = prometheus_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert set(rule["spec"]) == {"groups"}, f"{PROMETHEUS_RULE}: spec must be only the rules file's groups"
    for name, alert in alerts().items():
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description"} <= set(alert["annotations"]), name


def test_every_alert_has_a_firing_unit_test():
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert set(alerts()) - fired == set(), "alerts without a promtool test that makes them fire"


def test_promtool_unit_tests_pass(tmp_path):
    write_rules_file(tmp_path / "modelserve-rules.yaml")
    tests = tmp_path / "rules_test.yaml"
    tests.write_text(yaml.safe_dump(unit_tests_with_annotations(), sort_keys=False))
    result = promtool("test", "rules", str(tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_when_an_alert_threshold_is_loosened(tmp_path):
    """The unit tests bite: raising the queue alert's threshold above the test's depth fails them."""
    rule = prometheus_rule()
    for group in rule["spec"]["groups"]:
        for entry in group["rules"]:
            if entry.get("alert") == "ModelServeQueueSaturated":
                entry["expr"] = entry["expr"].replace("> 8", "> 12")
    (tmp_path / "modelserve-rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    doc = unit_tests_with_annotations()
    doc["tests"] = [test for test in doc["tests"] if test["name"] == "queue saturation"]
    tests = tmp_path / "rules_test.yaml"
    tests.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = promtool("test", "rules", str(tests), cwd=tmp_path)
    assert result.returncode != 0
    assert "ModelServeQueueSaturated" in result.stdout + result.stderr

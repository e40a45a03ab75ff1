#!/usr/bin/env python3
"""Helpers of scripts/test.d/31-alerts.sh for deploy/k8s/alerts.yaml (a PrometheusRule).

  check_alerts.py extract ALERTS OUT     write the PrometheusRule's .spec (plain Prometheus rule groups) to OUT,
                                         the form promtool reads
  check_alerts.py lint ALERTS TESTS DOC  static checks: every alert has a severity label, summary/description/
                                         runbook_url annotations, a runbook anchor that exists in DOC, and at
                                         least one test case in TESTS where it fires and one where it must not

`lint` prints one `ok`/`FAIL` line per check and, last, `counts <passed> <failed>` for the calling script.
It only reads files; promtool itself is run by the shell script.
"""

import re
import sys

import yaml

SEVERITIES = {"critical", "warning", "info"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def extract(alerts_path, out_path):
    doc = load(alerts_path)
    if doc.get("kind") != "PrometheusRule" or "groups" not in (doc.get("spec") or {}):
        sys.exit(f"{alerts_path}: not a PrometheusRule with spec.groups")
    with open(out_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc["spec"], f, sort_keys=False)


def github_anchors(markdown):
    """Anchors GitHub generates for the headings of a markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[`*_\[\]()]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 -]", "", text).replace(" ", "-"))
    return anchors


def lint(alerts_path, tests_path, doc_path):
    passed = failed = 0

    def check(ok, desc):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"  ok   {desc}")
        else:
            failed += 1
            print(f"  FAIL {desc}")

    rules = [r for g in load(alerts_path)["spec"]["groups"] for r in g["rules"] if "alert" in r]
    tests = load(tests_path)
    anchors = github_anchors(open(doc_path, encoding="utf-8").read())
    fires, silent = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = [r["alert"] for r in rules]
    check(len(names) == len(set(names)), f"{len(names)} alert names are unique")
    for r in rules:
        name, labels, ann = r["alert"], r.get("labels") or {}, r.get("annotations") or {}
        check(labels.get("severity") in SEVERITIES, f"{name}: severity label in {sorted(SEVERITIES)}")
        check(bool(ann.get("summary")) and bool(ann.get("description")), f"{name}: summary and description")
        url = ann.get("runbook_url", "")
        m = re.match(r"^docs/runbooks/(metrics|troubleshooting)\.md#([a-z0-9-]+)$", url)
        check(m is not None, f"{name}: runbook_url points at docs/runbooks/{{metrics,troubleshooting}}.md#anchor")
        if m and m.group(1) == "metrics":
            check(m.group(2) in anchors, f"{name}: anchor #{m.group(2)} exists in {doc_path}")
        check(name in fires, f"{name}: a test case where it fires")
        check(name in silent, f"{name}: a test case where it must not fire")
    print(f"counts {passed} {failed}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "lint":
        lint(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

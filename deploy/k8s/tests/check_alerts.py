#!/usr/bin/env python3
"""Helpers of scripts/test.d/31-alerts.sh for deploy/k8s/alerts.yaml (a PrometheusRule).

  check_alerts.py extract ALERTS OUT     write the PrometheusRule's .spec (plain Prometheus rule groups) to OUT,
                                         the form promtool reads
  check_alerts.py lint ALERTS TESTS DOC [SRC...]
                                         static checks: every alert has a severity label, summary/description/
                                         runbook_url annotations, a runbook anchor that exists in DOC, and at
                                         least one test case in TESTS where it fires and one where it must not;
                                         every metric the SRC files (metrics.rs) define has a `### `name`` section
                                         in DOC, and every metric an alert uses is defined there or is external

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
            text = m.group(1).strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-"))
    return anchors


# Series the alerts use that the services do not export (Prometheus itself, kube-state-metrics).
EXTERNAL_METRICS = {"up", "kube_deployment_status_replicas_available"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset"}


def source_metrics(paths):
    """Metric names defined in metrics.rs files: quoted bridge_*/gateway_* names."""
    names = set()
    for p in paths:
        names |= set(re.findall(r'"((?:bridge|gateway)_[a-z0-9_]+)"', open(p, encoding="utf-8").read()))
    return names


def expr_metrics(expr):
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label lists or strings.
    Histogram series (`_bucket`, `_sum`, `_count`) map to their base name."""
    expr = re.sub(r'"[^"]*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b\s*(\()?", expr):
        if m.group(2) is None and m.group(1) not in PROMQL_KEYWORDS:
            names.add(re.sub(r"_(bucket|sum|count)$", "", m.group(1)))
    return names


def lint(alerts_path, tests_path, doc_path, sources=()):
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
    doc = open(doc_path, encoding="utf-8").read()
    defined = source_metrics(sources)
    # Series written by recording rules count as defined for the alerts that read them.
    recorded = {r["record"] for g in load(alerts_path)["spec"]["groups"] for r in g["rules"] if "record" in r}
    if sources:
        check(len(defined) >= 10, f"{len(defined)} metric names found in {len(sources)} metrics.rs file(s)")
    for m in sorted(defined):
        check(re.search(rf"^### `{m}`$", doc, re.M) is not None, f"metric {m} has a section in {doc_path}")
    for r in rules:
        used = expr_metrics(r["expr"])
        unknown = sorted(n for n in used if n not in defined and n not in recorded and n not in EXTERNAL_METRICS)
        check(not unknown, f"{r['alert']}: uses only exported metrics ({', '.join(sorted(used))})"
              + (f" unknown: {', '.join(unknown)}" if unknown else ""))
    print(f"counts {passed} {failed}")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 5 and sys.argv[1] == "lint":
        lint(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

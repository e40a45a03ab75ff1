#!/usr/bin/env python3
"""Renders deploy/k8s (base and every overlay) with kustomize, validates every object against the Kubernetes
OpenAPI schemas offline (kubernetes-validate, strict: unknown fields fail) and lints the deployment contract:
probes, resources, securityContext, secret handling, replicas, PDBs, grace period, ingress hosts, scrape config and
the configuration variables documented in README.md.

Run by scripts/test.d/30-k8s.sh inside its cached venv; prints one `ok`/`FAIL` line per check and ends with
`N passed, N failed` (exit 1 on any failure). It reads the tree and never talks to a cluster.

It also lints deploy/docker/*.Dockerfile with hadolint (deploy/docker/hadolint.yaml) and checks that each runtime
stage runs as uid 10001 with an exec-form ENTRYPOINT (the images cannot be built here: no network for base images).

Usage: check_manifests.py --kubectl PATH [--hadolint PATH] [--k8s-version 1.30] [--root deploy/k8s]
"""

import glob

import argparse
import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import kubernetes_validate
import yaml

# Objects of these API groups are CRDs: no schema ships with kubernetes-validate, so they are skipped explicitly
# (and reported as skipped, not passed).
CRD_GROUPS = ("monitoring.coreos.com/",)
SECRET_NAME = "divine-bridge-secrets"
SECRET_KEYS = {"DATABASE_URL", "KEY_ENCRYPTION_KEY", "GATEWAY_SERVICE_TOKEN", "PDS_ADMIN_PASSWORD",
               "GATEWAY_DATABASE_URL"}
UID = 10001
ATBRIDGE = "divine-atbridge"
GATEWAY = "divine-handle-gateway"
# Container port each service listens on (HTTP_ADDR / BIND_ADDR defaults).
PORTS = {ATBRIDGE: 9090, GATEWAY: 3000}
# Secret keys each service needs (env name = Secret key, except SECRET_KEY_OF).
NEEDS = {ATBRIDGE: {"DATABASE_URL", "KEY_ENCRYPTION_KEY", "PDS_ADMIN_PASSWORD"},
         GATEWAY: {"DATABASE_URL", "GATEWAY_SERVICE_TOKEN"}}
# The gateway connects as its own least-privilege role (divine-atbridge db roles): its DATABASE_URL is a different
# Secret key from the worker's, so the two can never be the same credentials by accident of the manifests.
SECRET_KEY_OF = {(GATEWAY, "DATABASE_URL"): "GATEWAY_DATABASE_URL"}
# NetworkPolicy contract (base/networkpolicy.yaml): the egress each service must have and may have, as
# (protocol, port); ingress sources (namespace names) and ports.
DNS = {("UDP", 53), ("TCP", 53)}
EGRESS = {ATBRIDGE: DNS | {("TCP", 5432), ("TCP", 443)}, GATEWAY: DNS | {("TCP", 5432)}}
INGRESS = {ATBRIDGE: ({"monitoring"}, {9090}), GATEWAY: ({"ingress-nginx", "monitoring"}, {3000})}
# Private, loopback, CGNAT and link-local ranges HTTPS egress must exclude (cluster services, cloud metadata).
PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16"}
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# Extra time the pod needs after SHUTDOWN_GRACE_SECS (lease release round trip, HTTP server stop).
GRACE_MARGIN_SECS = 15
MIN_GRACE_SECS = 45


class Counter:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, ok, desc, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok   {desc}")
        else:
            self.failed += 1
            print(f"  FAIL {desc}" + (f": {detail}" if detail else ""))
        return ok

    def skip(self, desc):
        self.skipped += 1
        print(f"  skip {desc}")


def readme_variables(readme_path):
    """Variables of the README's Configuration section: (atbridge vars, gateway vars)."""
    text = open(readme_path, encoding="utf-8").read()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    atb_part, gw_part = section.split("`divine-handle-gateway`", 1)
    names = lambda s: {m for m in re.findall(r"`([A-Z][A-Z0-9_]+)`", s)}
    return names(atb_part), names(gw_part)


def render(kubectl, path):
    out = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return [d for d in yaml.safe_load_all(out.stdout) if d], ""


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def find(docs, kind, name):
    for d in by_kind(docs, kind):
        if d["metadata"]["name"] == name:
            return d
    return None


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def sec(container, pod, key):
    """A securityContext field from the container, falling back to the pod level."""
    c = container.get("securityContext") or {}
    if key in c:
        return c[key]
    return (pod.get("securityContext") or {}).get(key)


def probe_target(probe, container):
    """(path, numeric port) of an httpGet probe, resolving a named port."""
    hg = (probe or {}).get("httpGet") or {}
    port = hg.get("port")
    if isinstance(port, str):
        port = next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)
    return hg.get("path"), port


def config_of(docs, deployment):
    """Merged ConfigMap data referenced by the Deployment's envFrom (None if a reference is dangling)."""
    data = {}
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        for ref in c.get("envFrom", []):
            name = (ref.get("configMapRef") or {}).get("name")
            if name is None:
                continue
            cm = find(docs, "ConfigMap", name)
            if cm is None:
                return None
            data.update(cm.get("data") or {})
    return data


def selects(policy, pod_labels):
    """Whether a NetworkPolicy's podSelector selects pods with these labels (empty selector: every pod)."""
    sel = policy["spec"].get("podSelector") or {}
    if sel.get("matchExpressions"):
        return False  # not used here; treat as not selecting so the check fails loudly
    return all(pod_labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items())


def rule_ports(rule):
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports") or []}


def check_network_policies(t, where, svc, docs, pod_labels):
    """Default deny selects the pods; allowed egress is exactly EGRESS[svc]; ingress only from INGRESS[svc]."""
    policies = [p for p in by_kind(docs, "NetworkPolicy") if selects(p, pod_labels)]
    deny = [p for p in policies if set(p["spec"].get("policyTypes") or []) >= {"Ingress", "Egress"}
            and not p["spec"].get("podSelector") and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    t.check(bool(deny), f"{where}: selected by a default-deny NetworkPolicy (ingress + egress)")
    egress = [r for p in policies for r in p["spec"].get("egress") or []]
    ingress = [r for p in policies for r in p["spec"].get("ingress") or []]
    open_egress = [r for r in egress if not r.get("ports") or not r.get("to")]
    t.check(not open_egress, f"{where}: every egress rule names its peers and ports", str(open_egress))
    allowed = set().union(*[rule_ports(r) for r in egress]) if egress else set()
    t.check(allowed == EGRESS[svc], f"{where}: egress exactly {sorted(EGRESS[svc])}", str(sorted(allowed)))
    for r in egress:
        if ("TCP", 443) in rule_ports(r):
            blocks = [peer.get("ipBlock") or {} for peer in r["to"]]
            ok = all(PRIVATE_RANGES <= set(b.get("except") or []) for b in blocks)
            t.check(ok, f"{where}: HTTPS egress excludes private and link-local ranges", str(blocks))
        if ("UDP", 53) in rule_ports(r):
            t.check(all((peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                        == "kube-system" for peer in r["to"]), f"{where}: DNS egress only to kube-system")
    sources, ports = INGRESS[svc]
    seen = set()
    for r in ingress:
        peers = r.get("from") or []
        names = {(peer.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                 for peer in peers}
        ok = peers and None not in names and names <= sources and rule_ports(r) and \
            {port for _, port in rule_ports(r)} <= ports and all("ipBlock" not in peer for peer in peers)
        t.check(bool(ok), f"{where}: ingress only from {sorted(sources)} on {sorted(ports)}", str(r))
        seen |= names
    t.check(seen == sources, f"{where}: ingress allowed from {sorted(sources)}", str(sorted(seen)))


def base58_decode(text):
    n = 0
    for ch in text:
        if ch not in BASE58:
            return None
        n = n * 58 + BASE58.index(ch)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + raw


def did_key_ok(key):
    """A did:key of a secp256k1 (0xe7 0x01) or P-256 (0x80 0x24) compressed point: 2 + 33 bytes."""
    if not key.startswith("did:key:z"):
        return False
    raw = base58_decode(key[len("did:key:z"):])
    return raw is not None and len(raw) == 35 and raw[:2] in (b"\xe7\x01", b"\x80\x24") and raw[2] in (2, 3)


def check_container(t, where, svc, pod, c, cfg):
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            t.check(r in (res.get(kind) or {}), f"{where}: resources.{kind}.{r} set")
    port = PORTS[svc]
    t.check(probe_target(c.get("readinessProbe"), c) == ("/ready", port), f"{where}: readinessProbe GET /ready :{port}",
            str(probe_target(c.get("readinessProbe"), c)))
    t.check(probe_target(c.get("livenessProbe"), c) == ("/health", port), f"{where}: livenessProbe GET /health :{port}",
            str(probe_target(c.get("livenessProbe"), c)))
    t.check(sec(c, pod, "runAsNonRoot") is True, f"{where}: runAsNonRoot")
    t.check(sec(c, pod, "runAsUser") == UID, f"{where}: runAsUser {UID}", str(sec(c, pod, "runAsUser")))
    csc = c.get("securityContext") or {}
    t.check(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    t.check(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    t.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), f"{where}: capabilities drop ALL")
    t.check((sec(c, pod, "seccompProfile") or {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
    # Secrets: only secretKeyRef to the shared Secret, never a literal value, never from a ConfigMap.
    env = {e["name"]: e for e in c.get("env", [])}
    bad = [n for n in SECRET_KEYS if n in env and "value" in env[n]]
    t.check(not bad, f"{where}: no literal value for secret env", ",".join(sorted(bad)))
    for name in sorted(NEEDS[svc]):
        key = SECRET_KEY_OF.get((svc, name), name)
        ref = ((env.get(name) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        t.check(ref.get("name") == SECRET_NAME and ref.get("key") == key,
                f"{where}: {name} from secretKeyRef {SECRET_NAME}/{key}", str(ref))
    leaked = sorted(SECRET_KEYS & set(cfg or {}))
    t.check(not leaked, f"{where}: ConfigMap holds no secret keys", ",".join(leaked))
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    t.check("/tmp" in mounts, f"{where}: writable /tmp mounted (root fs is read-only)")


def check_tree(t, name, docs, readme_vars, production, overlay):
    kinds = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    print(f"[{name}] {len(docs)} objects: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    t.check(not by_kind(docs, "Secret"), f"{name}: no Secret object (secret values never live in git)")
    atb_vars, gw_vars = readme_vars

    for svc in (ATBRIDGE, GATEWAY):
        dep = find(docs, "Deployment", svc)
        if not t.check(dep is not None, f"{name}: Deployment {svc} rendered"):
            continue
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        pod_labels = spec["template"]["metadata"].get("labels", {})
        where = f"{name}/{svc}"
        t.check(spec.get("replicas", 1) >= 2, f"{where}: replicas >= 2", str(spec.get("replicas")))
        strat = spec.get("strategy") or {}
        t.check(strat.get("type") == "RollingUpdate" and (strat.get("rollingUpdate") or {}).get("maxUnavailable") == 0,
                f"{where}: RollingUpdate with maxUnavailable 0", str(strat))
        t.check(pod.get("automountServiceAccountToken") is False, f"{where}: no service account token mounted")
        cfg = config_of(docs, dep)
        t.check(cfg is not None, f"{where}: envFrom ConfigMaps exist")
        pdbs = [p for p in by_kind(docs, "PodDisruptionBudget")
                if labels_match(p["spec"].get("selector", {}).get("matchLabels"), pod_labels)]
        t.check(len(pdbs) == 1 and pdbs[0]["spec"].get("minAvailable", 0) >= 1,
                f"{where}: exactly one PodDisruptionBudget with minAvailable >= 1")
        ann = spec["template"]["metadata"].get("annotations", {})
        t.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(PORTS[svc])
                and ann.get("prometheus.io/path") == "/metrics", f"{where}: prometheus.io scrape annotations")
        check_network_policies(t, where, svc, docs, pod_labels)
        for c in pod["containers"]:
            check_container(t, f"{where}/{c['name']}", svc, pod, c, cfg)
            if overlay:
                image = c.get("image", "")
                tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
                t.check("/" in image and tag not in ("", "latest") or "@sha256:" in image,
                        f"{where}: image pinned to a registry tag", image)
        cfg = cfg or {}
        if svc == ATBRIDGE:
            c = pod["containers"][0]
            t.check(c.get("args") == ["run"], f"{where}: args [run]", str(c.get("args")))
            grace = int(cfg.get("SHUTDOWN_GRACE_SECS", "30"))
            tgp = pod.get("terminationGracePeriodSeconds", 30)
            need = max(MIN_GRACE_SECS, grace + GRACE_MARGIN_SECS)
            t.check(tgp >= need, f"{where}: terminationGracePeriodSeconds {tgp} >= {need} "
                    f"(SHUTDOWN_GRACE_SECS {grace} + {GRACE_MARGIN_SECS})")
            missing = sorted(v for v in atb_vars - SECRET_KEYS if v not in cfg)
            t.check(not missing, f"{where}: ConfigMap sets every README variable", ",".join(missing))
            t.check(cfg.get("MEDIA_ALLOW_LOOPBACK") == "false", f"{where}: MEDIA_ALLOW_LOOPBACK=false")
            if production:
                # Issue 12 §2: never an empty recovery-key list in production, never the localnet escape hatch.
                keys = [k.strip() for k in cfg.get("PLC_RECOVERY_KEYS", "").split(",") if k.strip()]
                t.check(bool(keys), f"{where}: PLC_RECOVERY_KEYS is not empty")
                t.check(all(k.startswith("did:key:z") for k in keys), f"{where}: PLC_RECOVERY_KEYS are did:keys",
                        ",".join(keys))
                t.check(cfg.get("ALLOW_NO_RECOVERY_KEYS", "false") == "false",
                        f"{where}: ALLOW_NO_RECOVERY_KEYS=false", cfg.get("ALLOW_NO_RECOVERY_KEYS", ""))
                placeholders = [k for k in keys if not did_key_ok(k)]
                if placeholders:
                    print(f"  note {where}: PLC_RECOVERY_KEYS still holds a placeholder {placeholders}: the worker "
                          "refuses to start (recovery_key_invalid) until the launch checklist sets the real key")
            t.check(cfg.get("HTTP_ADDR", "0.0.0.0:9090").endswith(":9090"), f"{where}: HTTP_ADDR on :9090")
            for key in ("PLC_DIRECTORY_URL", "PDS_URL"):
                t.check(cfg.get(key, "").startswith("https://") and not cfg[key].endswith("/"),
                        f"{where}: {key} is https without trailing slash", cfg.get(key, ""))
            if production:
                t.check(cfg.get("PLC_DIRECTORY_URL") == "https://plc.directory",
                        f"{where}: PLC_DIRECTORY_URL=https://plc.directory", cfg.get("PLC_DIRECTORY_URL", ""))
                t.check(spec.get("replicas", 1) >= 3, f"{where}: production runs >= 3 workers")
            svcs = [s for s in by_kind(docs, "Service") if labels_match(s["spec"].get("selector"), pod_labels)]
            t.check(any(p.get("port") == 9090 for s in svcs for p in s["spec"]["ports"]),
                    f"{where}: a metrics Service selects the pods on 9090")
        else:
            missing = sorted(v for v in gw_vars - SECRET_KEYS if v not in cfg)
            t.check(not missing, f"{where}: ConfigMap sets every README variable", ",".join(missing))
            c = pod["containers"][0]
            s = find(docs, "Service", GATEWAY)
            ok = s is not None and labels_match(s["spec"].get("selector"), pod_labels) and any(
                p.get("port") == 80 and probe_target({"httpGet": {"port": p.get("targetPort")}}, c)[1] == 3000
                for p in s["spec"]["ports"])
            t.check(ok, f"{where}: Service port 80 -> 3000 selects the pods")
            check_ingress(t, where, docs, cfg)


def check_ingress(t, where, docs, cfg):
    ing = find(docs, "Ingress", GATEWAY)
    if not t.check(ing is not None, f"{where}: Ingress rendered"):
        return
    domain = cfg.get("HANDLE_DOMAIN", "")
    api_host = urlparse(cfg.get("PUBLIC_URL", "")).hostname
    rules = {r.get("host"): r for r in ing["spec"].get("rules", [])}

    def routes(host, path, path_type):
        for p in ((rules.get(host) or {}).get("http") or {}).get("paths", []):
            b = p["backend"]["service"]
            if p["path"] == path and p["pathType"] == path_type and b["name"] == GATEWAY:
                return True
        return False

    t.check(routes(f"*.{domain}", "/.well-known/atproto-did", "Exact"),
            f"{where}: Ingress *.{domain} /.well-known/atproto-did -> gateway")
    t.check(api_host is not None and routes(api_host, "/api", "Prefix"),
            f"{where}: Ingress {api_host} /api -> gateway (host of PUBLIC_URL)")
    public = {p["path"] for r in ing["spec"].get("rules", []) for p in r["http"]["paths"]}
    t.check(not public & {"/", "/metrics", "/health", "/ready"}, f"{where}: /metrics, /health, /ready not public",
            str(sorted(public)))
    tls_hosts = {h for e in ing["spec"].get("tls", []) for h in e.get("hosts", [])}
    t.check(set(rules) <= tls_hosts, f"{where}: TLS covers every Ingress host", str(sorted(set(rules) - tls_hosts)))


def validate_schemas(t, name, docs, version):
    for d in docs:
        ident = f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith(CRD_GROUPS):
            t.skip(f"{ident} (CRD {d['apiVersion']}: no bundled schema)")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
            t.check(True, f"{ident} valid against Kubernetes {version} (strict)")
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            t.check(False, f"{ident} valid against Kubernetes {version} (strict)", str(e).splitlines()[0])


def check_dockerfiles(t, hadolint, docker_dir):
    files = sorted(glob.glob(os.path.join(docker_dir, "*.Dockerfile")))
    t.check(len(files) >= 2, f"{len(files)} Dockerfiles in {docker_dir}")
    for f in files:
        name = os.path.basename(f)
        out = subprocess.run([hadolint, "--no-color", "--config", os.path.join(docker_dir, "hadolint.yaml"), f],
                             capture_output=True, text=True, timeout=60)
        t.check(out.returncode == 0, f"{name}: hadolint clean", (out.stdout + out.stderr).strip().replace("\n", "; "))
        lines = [ln.strip() for ln in open(f, encoding="utf-8") if ln.strip() and not ln.lstrip().startswith("#")]
        stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
        t.check(len(stages) >= 2, f"{name}: multi-stage build")
        final = lines[stages[-1]:] if stages else []
        t.check("USER 10001:10001" in final, f"{name}: runtime stage runs as USER 10001:10001")
        t.check(any(ln.startswith('ENTRYPOINT ["/') for ln in final), f"{name}: exec-form ENTRYPOINT of the binary")
        t.check(any("libpq5" in ln and "ca-certificates" in ln for ln in final),
                f"{name}: runtime installs libpq5 + ca-certificates")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--hadolint")
    ap.add_argument("--k8s-version", default="1.30")
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--readme", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md"))
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    t = Counter()
    readme_vars = readme_variables(args.readme)
    t.check(len(readme_vars[0]) >= 20 and {"HANDLE_DOMAIN", "PUBLIC_URL"} <= readme_vars[1],
            f"README lists the configuration ({len(readme_vars[0])} atbridge, {len(readme_vars[1])} gateway vars)")
    trees = [("base", "base", False, False), ("staging", "overlays/staging", False, True),
             ("production", "overlays/production", True, True)]
    for name, rel, production, overlay in trees:
        docs, err = render(args.kubectl, os.path.join(root, rel))
        if not t.check(docs is not None, f"{name}: kustomize renders {rel}", err):
            continue
        validate_schemas(t, name, docs, args.k8s_version)
        check_tree(t, name, docs, readme_vars, production, overlay)
    if args.hadolint:
        check_dockerfiles(t, args.hadolint, os.path.normpath(os.path.join(root, "..", "docker")))
    # The alert rules file is a CRD object too: well-formed, but validated by promtool in 31-alerts.sh.
    alerts = yaml.safe_load(open(os.path.join(root, "alerts.yaml"), encoding="utf-8"))
    t.check(alerts.get("kind") == "PrometheusRule" and alerts.get("apiVersion") == "monitoring.coreos.com/v1",
            "alerts.yaml is a monitoring.coreos.com/v1 PrometheusRule")
    line = f"{t.passed} passed, {t.failed} failed"
    if t.skipped:
        line += f", {t.skipped} skipped"
    print(line)
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())

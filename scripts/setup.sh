#!/usr/bin/env bash
# Install everything Ostium needs, idempotently: Debian packages (scripts/apt-packages.txt) and a
# virtualenv in .venv with the package and its test extras. Safe to run again; does nothing when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { [ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get, network namespaces, BPF)" >&2; exit 1; }; }

missing=()
while read -r pkg; do
  pkg="${pkg%%#*}"; pkg="$(echo "$pkg" | tr -d '[:space:]')"
  [ -z "$pkg" ] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < scripts/apt-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
  need_root
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating virtualenv .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.ostium-installed"
# The install mode is part of the stamp: changing it reinstalls.
want="$( (echo "editable=compat"; cat pyproject.toml scripts/requirements-extra.txt 2>/dev/null) | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the ostium package and test extras into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -U pip >/dev/null 2>&1 || true
  # compat editable mode: a .pth path entry instead of setuptools' import-hook finder, which costs
  # ~25 ms at every Python start (every `ostium` command pays it). setuptools calls the mode transitional:
  # if a future one refuses it, the default editable install is used instead.
  if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat \
      >/tmp/ostium-pip-install.log 2>&1; then
    echo "setup: compat editable install refused, using the default one"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" || true
  fi
  if [ -s scripts/requirements-extra.txt ]; then
    .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-extra.txt 2>&1 | grep -v "is ignored: it is neither" || true
  fi
  .venv/bin/python -c "import mesh, aiohttp, yaml, pyroute2, grpc, re2" \
    || { echo "setup: the virtualenv is incomplete (see pip output above and /tmp/ostium-pip-install.log)" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

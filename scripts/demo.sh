#!/usr/bin/env bash
# `make demo`: start the agent in standalone mode and run the demo end to end, then clean up.
# The agent runs in its own "node" network namespace (ostium-demo) so the demo never changes this machine's
# own network settings; KEEP=1 leaves it running for you to explore (the script prints how to stop it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (network namespaces, cgroups, BPF)" >&2; exit 1; }

NODE=ostium-demo
STATE=${OSTIUM_DEMO_STATE:-/tmp/ostium-demo}
SOCK=$STATE/ostium.sock
export OSTIUM_SOCKET=$SOCK
OSTIUM=(.venv/bin/ostium)
AGENT_PID=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo; echo "KEEP=1: the agent is still running (pid $AGENT_PID)."
    echo "  export OSTIUM_SOCKET=$SOCK; .venv/bin/ostium endpoint list"
    echo "  stop: kill $AGENT_PID; .venv/bin/ostium delete -f examples/ ... ; ip netns del $NODE"
    return
  fi
  step "cleaning up"
  if [ -S "$SOCK" ]; then
    "${OSTIUM[@]}" delete -f examples/basic >/dev/null 2>&1 || true
  fi
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  pkill -f "$STATE/envoy" 2>/dev/null || true  # Envoy outlives the agent by design; the demo stops it
  ip netns del "$NODE" 2>/dev/null || true
  cg=$(findmnt -t cgroup2 -n -o TARGET | head -1)
  [ -n "$cg" ] && rmdir "$cg/ostium-demo" 2>/dev/null || true
  rm -rf /sys/fs/bpf/ostium-demo  # the demo's pinned programs and maps (a real node keeps them)
  rm -rf "$STATE"
}
trap cleanup EXIT

# A previous demo that was interrupted: start from scratch.
pkill -f "ostium agent --state-dir $STATE" 2>/dev/null || true
ip netns del "$NODE" 2>/dev/null || true
rm -rf "$STATE"; mkdir -p "$STATE"
ip netns add "$NODE"; ip -n "$NODE" link set lo up

step "starting the agent (standalone mode, state in $STATE, log in $STATE/agent.log)"
nsenter --net=/var/run/netns/$NODE "${OSTIUM[@]}" agent --state-dir "$STATE" --netns-prefix demo- \
  --cgroup-root ostium-demo --bpf-pin-dir ostium-demo --log-format text >"$STATE/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do "${OSTIUM[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
run "${OSTIUM[@]}" status

step "creating endpoints from examples/basic/endpoints.yaml"
run "${OSTIUM[@]}" apply -f examples/basic/endpoints.yaml
run "${OSTIUM[@]}" endpoint list

CART=$("${OSTIUM[@]}" endpoint get shop/cart -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
step "client -> cart ($CART:80) over HTTP, from inside the client endpoint"
for _ in $(seq 50); do "${OSTIUM[@]}" endpoint exec client -- curl -s -o /dev/null --max-time 1 "http://$CART/" && break; sleep 0.1; done
run "${OSTIUM[@]}" endpoint exec client -- curl -s -o /dev/null -w "HTTP %{http_code} from cart\n" "http://$CART/"
run "${OSTIUM[@]}" endpoint exec client -- ping -c 1 -W 2 "$CART"

step "an invalid manifest is rejected and changes nothing"
printf 'apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: Bad_Name}\n' > "$STATE/bad.yaml"
run "${OSTIUM[@]}" apply -f "$STATE/bad.yaml" || echo "(exit code $? as expected)"

for extra in scripts/demo.d/*.sh; do
  [ -e "$extra" ] || continue
  step "demo: $(basename "$extra" .sh)"
  # shellcheck source=/dev/null
  source "$extra"
done

step "demo finished"

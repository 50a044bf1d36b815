# shellcheck shell=bash
# The Star Wars demo (after Cilium's getting-started guide), sourced by scripts/demo.sh with the agent running.
# Uses: OSTIUM (the CLI as an array), STATE (the demo's state dir), step, run. Deletes all it creates, also when
# it fails half-way (its cleanup runs before demo.sh's own).

SW_DIR=examples/starwars
SW_VIP=10.96.0.80
SW_PY=.venv/bin/python

sw_cleanup() {
  if [ -n "${SW_MONITOR_PID:-}" ]; then
    kill "$SW_MONITOR_PID" 2>/dev/null || true
    wait "$SW_MONITOR_PID" 2>/dev/null || true
  fi
  SW_MONITOR_PID=""
  "${OSTIUM[@]}" delete -f "$SW_DIR/policy-l7.yaml" >/dev/null 2>&1 || true
  "${OSTIUM[@]}" delete -f "$SW_DIR/starwars.yaml" >/dev/null 2>&1 || true
}
# Chain our cleanup in front of demo.sh's EXIT trap for the duration of this part.
SW_PREV_TRAP=$(trap -p EXIT)
SW_PREV_TRAP_CMD=$(eval "set -- $SW_PREV_TRAP"; printf '%s' "${3:-}")
# shellcheck disable=SC2064
trap "sw_cleanup; $SW_PREV_TRAP_CMD" EXIT

# One request from a ship, printed with its verdict:
#   tiefighter POST /v1/request-landing -> 200 Ship landed (allowed)
sw_request() {
  local ship=$1 method=$2 path=$3 out rc code body verdict
  rc=0
  out=$("${OSTIUM[@]}" endpoint exec "$ship" -- curl -s --max-time 1.5 -X "$method" -w '\n%{http_code}' \
        "http://$SW_VIP$path" 2>/dev/null) || rc=$?
  code=${out##*$'\n'}
  body=${out%$'\n'*}
  body=${body%$'\n'}
  if [ "$rc" = 28 ] || [ "$code" = 000 ]; then
    verdict="no answer within 1.5 s (dropped at L3/L4)"
    printf '%-10s %-4s %-22s -> %s\n' "$ship" "$method" "$path" "$verdict"
    return 0
  fi
  case "$code" in
    403) verdict="denied at L7" ;;
    2??) verdict="allowed" ;;
    *)   verdict="allowed by the mesh; the deathstar answered $code" ;;
  esac
  printf '%-10s %-4s %-22s -> %s %s (%s)\n' "$ship" "$method" "$path" "$code" "$body" "$verdict"
}

# HTTP status only (for polling).
sw_code() {
  "${OSTIUM[@]}" endpoint exec "$1" -- curl -s -o /dev/null --max-time 1 -X "$2" -w '%{http_code}' \
    "http://$SW_VIP$3" 2>/dev/null || true
}

# Poll until a component has applied the current policy revision (the datapath's maps, or Envoy's ACK).
sw_wait_applied() {
  local component=$1
  for _ in $(seq 100); do
    if "${OSTIUM[@]}" status -o json 2>/dev/null | "$SW_PY" -c '
import json, sys
s = json.load(sys.stdin)["components"]
c = s.get(sys.argv[1], {})
ok = c.get("applied_policy_revision") == s["policy"]["revision"] and not c.get("xds_pending")
sys.exit(0 if ok else 1)' "$component"; then
      return 0
    fi
    sleep 0.1
  done
  echo "(warning: $component did not report the policy revision as applied within 10 s)"
}

step "Star Wars: the deathstar (2 backends behind $SW_VIP:80), a tiefighter (org=empire), an xwing (org=alliance)"
run "${OSTIUM[@]}" apply -f "$SW_DIR/starwars.yaml"
printf 'waiting for the deathstar to answer on its VIP'
for _ in $(seq 100); do
  [ "$(sw_code tiefighter GET /v1)" = 200 ] && break
  printf '.'; sleep 0.1
done
echo
run "${OSTIUM[@]}" endpoint list
run "${OSTIUM[@]}" service list

step "without policy every ship may land"
sw_request tiefighter POST /v1/request-landing
sw_request xwing POST /v1/request-landing

step "L3/L4 policy: only org=empire may reach the deathstar, on TCP 80 ($SW_DIR/policy-l3l4.yaml)"
run "${OSTIUM[@]}" apply -f "$SW_DIR/policy-l3l4.yaml"
sw_wait_applied datapath
"${OSTIUM[@]}" monitor --type drop >"$STATE/starwars-monitor.log" 2>&1 &
SW_MONITOR_PID=$!
sw_request tiefighter POST /v1/request-landing
sw_request xwing POST /v1/request-landing
# The monitor subscribes asynchronously: knock until it has printed the xwing's drop (or give up after 5 s).
for _ in $(seq 20); do
  [ -s "$STATE/starwars-monitor.log" ] && break
  "${OSTIUM[@]}" endpoint exec xwing -- curl -s -o /dev/null --max-time 0.25 "http://$SW_VIP/v1" >/dev/null 2>&1 || true
done
kill "$SW_MONITOR_PID" 2>/dev/null || true
wait "$SW_MONITOR_PID" 2>/dev/null || true
SW_MONITOR_PID=""
echo "\$ ${OSTIUM[*]} monitor --type drop   (what the datapath reported meanwhile)"
head -n 3 "$STATE/starwars-monitor.log" || true

step "L7 policy: the Empire may only request landing: POST /v1/request-landing ($SW_DIR/policy-l7.yaml)"
run "${OSTIUM[@]}" apply -f "$SW_DIR/policy-l7.yaml"
sw_wait_applied envoy
# Envoy has acknowledged the rules; poll until the deathstar's port is enforced end to end.
for _ in $(seq 30); do
  [ "$(sw_code tiefighter PUT /v1/exhaust-port)" = 403 ] && break
  sleep 0.1
done
sw_request tiefighter POST /v1/request-landing
sw_request tiefighter PUT /v1/exhaust-port
sw_request xwing POST /v1/request-landing
if [ "$(sw_code tiefighter PUT /v1/exhaust-port)" != 403 ]; then
  echo "(!) the exhaust port is not protected: HTTP flows are not redirected to Envoy on this build"
fi
# Envoy's access log as flows (shown when this agent serves the flows API).
if SW_FLOWS=$("${OSTIUM[@]}" observe --type l7 --to-label class=deathstar --last 4 2>/dev/null); then
  echo "\$ ${OSTIUM[*]} observe --type l7 --to-label class=deathstar --last 4"
  printf '%s\n' "$SW_FLOWS"
fi
echo "\$ ${OSTIUM[*]} status -o json   (the envoy component)"
"${OSTIUM[@]}" status -o json | "$SW_PY" -c '
import json, sys
e = json.load(sys.stdin)["components"].get("envoy", {})
keys = ("state", "redirected_ports", "xds_acked", "xds_nacked", "xds_ack_latency_ms", "access_log_records")
print("envoy: " + ", ".join(f"{k}={e.get(k)}" for k in keys))' || true

step "Star Wars: cleaning up"
run "${OSTIUM[@]}" delete -f "$SW_DIR/policy-l7.yaml"
run "${OSTIUM[@]}" delete -f "$SW_DIR/starwars.yaml"
# shellcheck disable=SC2064
if [ -n "$SW_PREV_TRAP_CMD" ]; then trap "$SW_PREV_TRAP_CMD" EXIT; else trap - EXIT; fi

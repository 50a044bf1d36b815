# shellcheck shell=bash
# The Kafka demo (after Cilium's Kafka guide), sourced by scripts/demo.sh with the agent running: a broker in an
# endpoint, a producer and a consumer, and a CiliumNetworkPolicy with Kafka rules enforced by the agent's Kafka
# proxy. Uses: OSTIUM (the CLI as an array), step, run. Deletes all it creates, also when it fails half-way (its
# cleanup runs before demo.sh's own).

KF_DIR=examples/kafka
KF_BROKER=10.200.0.90:9092   # spec.ip of the kafka endpoint in kafka.yaml
KF_PY=.venv/bin/python

kf_cleanup() {
  "${OSTIUM[@]}" delete -f "$KF_DIR/policy.yaml" >/dev/null 2>&1 || true
  "${OSTIUM[@]}" delete -f "$KF_DIR/kafka.yaml" >/dev/null 2>&1 || true
}
# Chain our cleanup in front of the EXIT trap in place for the duration of this part.
KF_PREV_TRAP=$(trap -p EXIT)
KF_PREV_TRAP_CMD=$(eval "set -- $KF_PREV_TRAP"; printf '%s' "${3:-}")
# shellcheck disable=SC2064
trap "kf_cleanup; $KF_PREV_TRAP_CMD" EXIT

# One Kafka request from an endpoint, printed with its verdict:
#   producer  produce topic2 "secret" -> TopicAuthorizationFailedError (denied at L7 by the Kafka proxy)
kf_request() {
  local ep=$1 out rc verdict
  shift
  rc=0
  out=$("${OSTIUM[@]}" endpoint exec "$ep" -- "$KF_PY" "$KF_DIR/client.py" "$@" 2>/dev/null) || rc=$?
  case "$rc" in
    0) verdict="allowed" ;;
    1) verdict="denied at L7 by the Kafka proxy" ;;
    2) verdict="no answer: dropped at L3/L4" ;;
    *) verdict="client failed (exit $rc)" ;;
  esac
  printf '%-9s %s (%s)\n' "$ep" "${out:-$1 $3}" "$verdict"
}

# Poll until the datapath has applied the current policy revision.
kf_wait_applied() {
  for _ in $(seq 100); do
    if "${OSTIUM[@]}" status -o json 2>/dev/null | "$KF_PY" -c '
import json, sys
s = json.load(sys.stdin)["components"]
sys.exit(0 if s["datapath"].get("applied_policy_revision") == s["policy"]["revision"] else 1)'; then
      return 0
    fi
    sleep 0.1
  done
  echo "(warning: the datapath did not report the policy revision as applied within 10 s)"
}

step "Kafka: a broker (app=kafka, $KF_BROKER), a producer and a consumer ($KF_DIR/kafka.yaml)"
run "${OSTIUM[@]}" apply -f "$KF_DIR/kafka.yaml"
printf 'waiting for the broker to listen'
for _ in $(seq 100); do
  "${OSTIUM[@]}" endpoint exec producer -- "$KF_PY" -c '
import socket, sys
host, port = sys.argv[1].split(":")
socket.create_connection((host, int(port)), timeout=0.5).close()' "$KF_BROKER" >/dev/null 2>&1 && break
  printf '.'; sleep 0.1
done
echo
run "${OSTIUM[@]}" endpoint list

step "Kafka policy: the producer may produce to topic1, the consumer may consume topic1 ($KF_DIR/policy.yaml)"
run "${OSTIUM[@]}" apply -f "$KF_DIR/policy.yaml"
kf_wait_applied
kf_request producer produce "$KF_BROKER" topic1 "hello from the producer"
kf_request producer produce "$KF_BROKER" topic2 "a secret"
kf_request consumer consume "$KF_BROKER" topic1 --group demo
kf_request consumer produce "$KF_BROKER" topic1 "the consumer tries to write"

# The Kafka proxy's records as flows: api, topic, verdict, both sides.
echo "\$ ${OSTIUM[*]} observe --protocol kafka --kafka-topic topic2 --last 3"
"${OSTIUM[@]}" observe --protocol kafka --kafka-topic topic2 --last 3 || true
echo "\$ ${OSTIUM[*]} observe --protocol kafka --from-label app=consumer --last 6"
"${OSTIUM[@]}" observe --protocol kafka --from-label app=consumer --last 6 || true
echo "\$ ${OSTIUM[*]} status -o json   (the kafka component)"
"${OSTIUM[@]}" status -o json | "$KF_PY" -c '
import json, sys
k = json.load(sys.stdin)["components"].get("kafka", {})
i = k.get("ingress", {})
print("kafka proxy: %s, ingress port %s: requests=%s forwarded=%s denied=%s"
      % (k.get("state"), i.get("port"), i.get("requests"), i.get("forwarded"), i.get("denied")))' || true

step "Kafka: cleaning up"
run "${OSTIUM[@]}" delete -f "$KF_DIR/policy.yaml"
run "${OSTIUM[@]}" delete -f "$KF_DIR/kafka.yaml"
# shellcheck disable=SC2064
if [ -n "$KF_PREV_TRAP_CMD" ]; then trap "$KF_PREV_TRAP_CMD" EXIT; else trap - EXIT; fi

"""v1 Service manifests, backend selection and the socket-LB map plan (pure)."""

from __future__ import annotations

import pytest

from bpf.maps import BackendId, Lb4Backend, Lb4Key, Lb4Service
from mesh.datapath import lbmap
from mesh.errors import ConflictError, ValidationError
from mesh.manifests import parse_documents, parse_yaml_text
from mesh.services import BackendCandidate, EndpointPort, Frontend, Backend, resolve_service
from mesh.services.manifest import check_vip_conflicts
from mesh.services.model import SessionAffinity

GOOD = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
"""


def parse(text: str):
    return [p.obj for p in parse_documents(parse_yaml_text(text, "svc.yaml"))]


def test_service_manifest_parses():
    (svc,) = parse(GOOD)
    assert svc.cluster_ip == "10.96.0.10" and svc.namespace == "shop"
    assert svc.session_affinity is SessionAffinity.CLIENT_IP and svc.affinity_timeout == 60
    assert [(p.port, p.protocol, p.target_port) for p in svc.ports] == [(80, "TCP", "http"), (53, "UDP", 5353)]


@pytest.mark.parametrize("change, path", [
    (("clusterIP: 10.96.0.10", "clusterIP: 10.96.0.300"), "spec.clusterIP"),
    (("clusterIP: 10.96.0.10", "clusterIP: None"), "spec.clusterIP"),
    (("  clusterIP: 10.96.0.10\n", ""), "spec.clusterIP"),
    (("port: 80,", "port: 70000,"), "spec.ports[0].port"),
    (("protocol: UDP", "protocol: SCTP"), "spec.ports[1].protocol"),
    (("{name: dns, ", "{"), "spec.ports[1].name"),
    (("sessionAffinity: ClientIP", "sessionAffinity: Sticky"), "spec.sessionAffinity"),
    (("timeoutSeconds: 60", "timeoutSeconds: 0"), "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
    (("selector: {app: web}", "selector: {app: 'bad value!'}"), "spec.selector"),
    (("selector:", "type: NodePort\n  selector:"), "spec.type"),
    (("targetPort: 5353", "targetPort: Not_A_Name"), "spec.ports[1].targetPort"),
])
def test_bad_service_names_the_field(change, path):
    with pytest.raises(ValidationError) as exc:
        parse(GOOD.replace(*change))
    assert exc.value.path.startswith(path), str(exc.value)
    assert "svc.yaml#1" in str(exc.value)


def test_conflicting_cluster_ips_are_rejected():
    (a,) = parse(GOOD)
    (b,) = parse(GOOD.replace("name: web,", "name: other,"))
    with pytest.raises(ConflictError, match="shop/other.*10.96.0.10.*shop/web"):
        check_vip_conflicts([a, b])


def cand(name, ip, labels, ns="shop", ports=(), ready=True):
    return BackendCandidate(ns, name, labels, ip, tuple(ports), ready)


def test_backends_selected_by_labels_namespace_and_named_port():
    (svc,) = parse(GOOD)
    cands = [
        cand("w1", "10.0.0.1", {"app": "web"}, ports=[EndpointPort("http", 8080)]),
        cand("w2", "10.0.0.2", {"app": "web"}, ports=[EndpointPort("http", 9090)]),
        cand("w3", "10.0.0.3", {"app": "web"}),                       # no port named http
        cand("x", "10.0.0.4", {"app": "web"}, ns="other", ports=[EndpointPort("http", 8080)]),
        cand("db", "10.0.0.5", {"app": "db"}, ports=[EndpointPort("http", 8080)]),
        cand("w6", "10.0.0.6", {"app": "web"}, ports=[EndpointPort("http", 8080)], ready=False),
    ]
    http, dns = resolve_service(svc, cands)
    assert [(b.ip, b.port) for b in http.backends] == [("10.0.0.1", 8080), ("10.0.0.2", 9090)]
    assert [(b.ip, b.port) for b in dns.backends] == [("10.0.0.1", 5353), ("10.0.0.2", 5353), ("10.0.0.3", 5353)]
    assert http.affinity_timeout == 60 and http.key == ("10.96.0.10", 80, "TCP")


def test_slot_weights():
    assert lbmap.slot_weights([1, 1, 1], 256) == [1, 1, 1]
    assert lbmap.slot_weights([20, 10, 0], 256) == [2, 1, 0]
    assert sum(lbmap.slot_weights([1000, 1], 100)) <= 101 and lbmap.slot_weights([1000, 1], 100)[1] == 1


def test_plan_keeps_ids_stable_and_releases_removed_backends():
    rev, be = lbmap.IdAllocator(), lbmap.IdAllocator()
    f = Frontend("10.96.0.1", 80, "TCP", (Backend("10.0.0.1", 8080), Backend("10.0.0.2", 8080)))
    st = lbmap.plan([f], rev, be)
    master = Lb4Service.unpack(st.services[Lb4Key("10.96.0.1", 80, 6, 0).pack()])
    assert master.count == 2 and master.rev_nat_id == 1
    ids = {Lb4Backend.unpack(v).address: BackendId.unpack(k).id for k, v in st.backends.items()}
    f2 = Frontend("10.96.0.1", 80, "TCP", (Backend("10.0.0.2", 8080),))
    st2 = lbmap.plan([f2], rev, be)
    assert {BackendId.unpack(k).id for k in st2.backends} == {ids["10.0.0.2"]}
    assert Lb4Key("10.96.0.1", 80, 6, 2).pack() not in st2.services


def test_plan_rejects_two_services_on_one_frontend():
    f1 = Frontend("10.96.0.1", 80, "TCP", (), service="a/x")
    f2 = Frontend("10.96.0.1", 80, "TCP", (), service="a/y")
    with pytest.raises(ConflictError, match="a/y.*a/x"):
        lbmap.plan([f1, f2], lbmap.IdAllocator(), lbmap.IdAllocator())


def test_plan_without_backends_writes_a_refusing_master():
    st = lbmap.plan([Frontend("10.96.0.1", 80, "TCP", ())], lbmap.IdAllocator(), lbmap.IdAllocator())
    assert len(st.services) == 1 and Lb4Service.unpack(next(iter(st.services.values()))).count == 0

"""Small programs the datapath tests run inside endpoints (as `python -c`)."""

SERVER = r'''
import socket, sys, threading
name, port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(256)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
def udp():
    while True:
        data, addr = u.recvfrom(4096)
        u.sendto(name.encode() + b" " + data, addr)
def conn(c):
    # Greets with its name, then echoes until the peer closes (long transfers use this).
    try:
        c.sendall(name.encode() + b"\n")
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
threading.Thread(target=udp, daemon=True).start()
open(ready, "w").write("ready")
while True:
    c, _ = t.accept()
    threading.Thread(target=conn, args=(c,), daemon=True).start()
'''

CLIENT = r'''
import errno, json, socket, sys
mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET   # ::ffff:a.b.c.d: a dual-stack client
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
for i in range(count):
    rec = {}
    try:
        if mode == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect((host, port))
            rec["peer"] = list(s.getpeername())[:2]
            f = s.makefile("rb")
            rec["backend"] = f.readline().decode().strip()
            s.close()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.sendto(b"ping%d" % i, (host, port))
            data, addr = s.recvfrom(4096)
            rec["backend"] = data.decode().split()[0]
            rec["peer"] = list(addr)[:2]
            s.close()
    except OSError as e:
        rec["error"] = errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
    print(json.dumps(rec), flush=True)
'''

STREAM = r'''
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=5)
s.settimeout(5)
f = s.makefile("rb")
print("hello", f.readline().decode().strip(), flush=True)
chunk = b"x" * 16384
total, last = 0, 0.0
while True:
    s.sendall(chunk)
    got = 0
    while got < len(chunk):
        d = s.recv(len(chunk) - got)
        if not d:
            print("closed", flush=True); sys.exit(1)
        got += len(d)
    total += got
    now = time.monotonic()
    if now - last > 0.05:
        print(total, flush=True)
        last = now
'''

OWNER = r'''
import json, sys, time
from types import SimpleNamespace
from mesh.datapath import Datapath, DatapathConfig
from mesh.policy.model import Direction, Verdict
from mesh.policy.resolve import PolicyEntry, PolicyKey
from mesh.services.model import Backend, Frontend
cfg = json.loads(sys.argv[1])
dp = Datapath(DatapathConfig(cgroup_root=cfg["cgroup_root"], pin_dir=cfg["pin_dir"], build_dir=cfg["build_dir"]))
dp.start()
for e in cfg["endpoints"]:
    dp.attach_endpoint(e["id"], e["ifname"], e["ifindex"], e["ip"], e["identity"])
dp.sync_services([Frontend(cfg["vip"], 80, "TCP", (Backend(cfg["backend"], 8080),), 0, "default/web")])
ms = {PolicyKey(Direction.INGRESS, cfg["allowed_identity"], 6, 8080, 8080): PolicyEntry(Verdict.ALLOW)}
dp.sync_policy(cfg["policy_ep"], SimpleNamespace(map_state=ms, ingress_enforced=True, egress_enforced=False))
print("ready", flush=True)
time.sleep(3600)
'''

CONNLOOP = r'''
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
while True:
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.settimeout(1)
        name = s.makefile("rb").readline().decode().strip()
        s.close()
        print("ok", name, flush=True)
    except OSError as e:
        print("err", errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout", flush=True)
'''

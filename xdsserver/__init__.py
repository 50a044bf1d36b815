"""xDS control plane for Envoy (ADS over gRPC). Named xdsserver, never xds: see DESIGN.md.

- resources.py   type URLs, dict/message → Any, names and content versions
- cache.py       SnapshotCache: one versioned snapshot per Envoy node id
- server.py      XdsServer: Delta + SotW ADS over grpc.aio, ACK/NACK per resource, push→ACK latency
- envoy.py       EnvoyProcess: bootstrap, start/ready, restart with backoff, adopt, stop
- als.py         AccessLogReceiver: Envoy gRPC access logs → L7Record
- translate/     pure: L7 policy → Listeners, Routes (RBAC per route), Clusters
- proxy.py       L7Proxy: the three composed for the agent
- testing.py     helpers for tests against the real Envoy

Nothing here imports grpc or protobuf at module level: the CLI stays fast.
"""

"""xDS control plane for Envoy (ADS over gRPC). Named xdsserver, never xds: see DESIGN.md."""

"""Ingress (Kubernetes Ingress, Gateway API) and egress gateways: manifests, validation, status (pure)."""

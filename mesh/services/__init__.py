"""Services: the `v1 Service` model, manifest parsing and backend selection (pure)."""

from mesh.services.model import (Backend, BackendCandidate, EndpointPort, Frontend, Service,
                                 ServicePort, SessionAffinity)
from mesh.services.resolve import candidate_from_endpoint, resolve_all, resolve_service, selects

__all__ = ["Backend", "BackendCandidate", "EndpointPort", "Frontend", "Service", "ServicePort",
           "SessionAffinity", "candidate_from_endpoint", "resolve_all", "resolve_service", "selects"]

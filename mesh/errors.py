"""One exception hierarchy. Messages say what is wrong, where, and what to do."""

from __future__ import annotations


class OstiumError(Exception):
    """Base of every error Ostium raises on purpose. The CLI prints str(e) on one line."""

    exit_code = 1


class ConfigError(OstiumError):
    """Invalid configuration (file, environment or flag)."""


class ValidationError(OstiumError):
    """Bad user input: a manifest, a policy, a CLI argument.

    `path` is the field path inside the document (``spec.ingress[0].toPorts[0].ports[0].port``),
    `document` names the document (``file.yaml#2 (CiliumNetworkPolicy default/foo)``).
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str = "", document: str = "") -> None:
        self.message = message
        self.path = path
        self.document = document
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.document:
            where += f"{self.document}: "
        if self.path:
            where += f"{self.path}: "
        return f"{where}{self.message}"

    def with_document(self, document: str) -> "ValidationError":
        """Return a copy that names the document (keeps the subclass)."""
        err = type(self).__new__(type(self))
        ValidationError.__init__(err, self.message, path=self.path, document=document)
        return err


class ManifestError(ValidationError):
    """A manifest that cannot be parsed or is of an unknown kind."""


class PolicyError(ValidationError):
    """A policy that fails validation."""


class NotFoundError(OstiumError):
    """A named object does not exist."""

    exit_code = 3


class ConflictError(OstiumError):
    """An object clashes with an existing one (duplicate name, address in use)."""

    exit_code = 4


class IPAMError(OstiumError):
    """Address allocation failed (pool exhausted, address outside the pool, already in use)."""


class IdentityError(OstiumError):
    """Identity allocation or lookup failed."""


class EndpointError(OstiumError):
    """Creating, reconciling or deleting an endpoint's kernel objects failed."""


class DatapathError(OstiumError):
    """BPF build, load, attach or map update failed, or a kernel feature is missing."""


class AgentError(OstiumError):
    """The agent cannot start or cannot be reached."""

    exit_code = 5

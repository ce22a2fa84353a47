"""``dyn://ns.comp.ep`` endpoint addresses (reference §1.1)."""

from __future__ import annotations

from typing import NamedTuple

ENDPOINT_SCHEME = "dyn://"
DEFAULT_NAMESPACE = "NS"
DEFAULT_COMPONENT = "C"
DEFAULT_ENDPOINT = "E"


class EndpointId(NamedTuple):
    namespace: str
    component: str
    name: str

    @classmethod
    def parse(cls, text: str) -> EndpointId:
        """Parse ``dyn://ns.comp.ep`` (or ``ns/comp/ep``): 1 part is the component, extra parts join with ``_``."""
        body = text[len(ENDPOINT_SCHEME):] if text.startswith(ENDPOINT_SCHEME) else text
        body = body.strip(" /.")
        parts = [p for p in body.replace("/", ".").split(".") if p]
        if len(parts) == 0:
            return cls(DEFAULT_NAMESPACE, DEFAULT_COMPONENT, DEFAULT_ENDPOINT)
        if len(parts) == 1:
            return cls(DEFAULT_NAMESPACE, parts[0], DEFAULT_ENDPOINT)
        if len(parts) == 2:
            return cls(parts[0], parts[1], DEFAULT_ENDPOINT)
        return cls(parts[0], parts[1], "_".join(parts[2:]))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.component}/{self.name}"

    def as_url(self) -> str:
        return f"{ENDPOINT_SCHEME}{self.namespace}.{self.component}.{self.name}"

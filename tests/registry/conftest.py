"""Registry tests run against a real `docker-registry` (tests/registry_server.py)."""

from registry_server import registry, tls_registry, token_registry

__all__ = ["registry", "tls_registry", "token_registry"]

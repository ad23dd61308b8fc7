"""Fakes of services that cannot run here, each held to the real service's published schema."""

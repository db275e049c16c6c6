"""Targets: where lockd runs its probe and gathers evidence (local Python, Docker)."""

"""The orders example service (placeholder until the composition-root issue lands)."""

"""Method registry and the per-request context handlers receive."""

"""Pydantic models: the one source of request and response shapes (schemas/ is generated from them)."""

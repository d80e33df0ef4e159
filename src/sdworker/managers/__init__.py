"""Managers own the heavy state: torch runtime, model files, pipelines, outputs."""

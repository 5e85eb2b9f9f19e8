"""Integrations with pipeline libraries (diffusers); each is an optional import."""

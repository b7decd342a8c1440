"""ASGI middleware, one class per module."""

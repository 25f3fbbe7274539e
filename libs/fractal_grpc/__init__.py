"""Shared code of the fractal-grpc services."""

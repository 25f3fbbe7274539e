"""Benchmarks of fractal-grpc (``make bench`` runs ``python -m bench.run``); see README.md."""

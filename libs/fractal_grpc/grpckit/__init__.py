"""The gRPC server kit used by every service: interceptors, health, reflection, shutdown."""

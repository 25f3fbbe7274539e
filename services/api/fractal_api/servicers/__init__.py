"""gRPC servicers: authorize, load, check, change, return. Database work is in ``store``."""

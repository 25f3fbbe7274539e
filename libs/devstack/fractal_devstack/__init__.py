"""The local development stack: embedded PostgreSQL and NATS, dev keys, ``fractal-dev``."""

from fractal_devstack.embedded import DevStackError, EmbeddedNats, EmbeddedPostgres
from fractal_devstack.keys import ensure_dev_keys, generate_keypair

__all__ = [
    "DevStackError",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "ensure_dev_keys",
    "generate_keypair",
]

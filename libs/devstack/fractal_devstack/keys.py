"""Ed25519 key pairs for the development stack and the test suite.

User tokens (api) and service tokens (runner → api) are signed with separate pairs.
Keys are PEM: PKCS8 for the private key, SubjectPublicKeyInfo for the public key,
and every file is written with mode 0600.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# Environment variable → file name inside the keys directory.
DEV_KEY_FILES: dict[str, str] = {
    "FRACTAL_JWT_PRIVATE_KEY_FILE": "jwt_private.pem",
    "FRACTAL_JWT_PUBLIC_KEY_FILE": "jwt_public.pem",
    "FRACTAL_SERVICE_PRIVATE_KEY_FILE": "service_private.pem",
    "FRACTAL_SERVICE_PUBLIC_KEY_FILE": "service_public.pem",
}

_PAIRS: tuple[tuple[str, str], ...] = (
    ("jwt_private.pem", "jwt_public.pem"),
    ("service_private.pem", "service_public.pem"),
)


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _public_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def generate_keypair(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> None:
    """Generate a new Ed25519 key pair and write it as PEM files (mode 0600)."""
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write_secret(Path(private_path), private_pem)
    _write_secret(Path(public_path), _public_pem(private_key))


def _derive_public(private_path: Path, public_path: Path) -> None:
    private_key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ValueError(f"{private_path} is not an Ed25519 private key")
    _write_secret(public_path, _public_pem(private_key))


def ensure_dev_keys(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Make sure ``directory`` holds the user-token and service-token key pairs.

    Existing keys are kept (a missing public key is derived from its private key), so
    tokens stay valid across restarts. Safe to call from concurrent processes.
    Returns the ``FRACTAL_*_KEY_FILE`` environment variables mapped to absolute paths.
    """
    keys_dir = Path(directory).absolute()
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(keys_dir / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            for private_name, public_name in _PAIRS:
                private_path, public_path = keys_dir / private_name, keys_dir / public_name
                if not private_path.exists():
                    generate_keypair(private_path, public_path)
                elif not public_path.exists():
                    _derive_public(private_path, public_path)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return {env: str(keys_dir / name) for env, name in DEV_KEY_FILES.items()}

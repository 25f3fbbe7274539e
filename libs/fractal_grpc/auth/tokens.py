"""Ed25519-signed JWTs (EdDSA).

Two audiences: ``fractal-api`` for user tokens (minted by api only, it alone has the private key)
``fractal-internal`` for service tokens (runner and collector calling api), and
``fractal-runner`` for api's service tokens to the runner (signed with api's key). Verification
pins the algorithm to EdDSA, so ``alg=none`` and HMAC tricks are refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

USER_AUDIENCE = "fractal-api"
INTERNAL_AUDIENCE = "fractal-internal"
# api's service tokens for the runner's internal service (job folders): signed with api's own
# key, verified by the runner with api's public key; never accepted where a user token is.
RUNNER_AUDIENCE = "fractal-runner"
ISSUER = "fractal-api"
_ALGORITHMS = ["EdDSA"]
_VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The token is missing, expired, forged or meant for another audience."""

    def __init__(self, message: str, *, reason: str = "INVALID_TOKEN") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    subject: str
    audience: str
    expires_at: int
    # The user's token generation at login (``gen``; 0 when absent): a password change raises
    # the user's, which ends every older token.
    generation: int = 0


class TokenSigner:
    def __init__(self, private_key_pem: str, *, issuer: str, audience: str, lifetime: int) -> None:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the token signing key must be an Ed25519 private key")
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime

    def sign(self, subject: str, *, generation: int | None = None) -> tuple[str, int]:
        """A token for ``subject`` (of the user's token ``generation``, if given) and its
        lifetime in seconds."""
        now = int(time.time())
        payload: dict[str, object] = {
            "sub": subject,
            "aud": self.audience,
            "iss": self.issuer,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        if generation is not None:
            payload["gen"] = generation
        return jwt.encode(payload, self._key, algorithm="EdDSA"), self.lifetime


def unusable_public_key_pem() -> str:
    """A public key no token verifies against (its private key is thrown away at once): a
    verifier for a service whose real key is not configured refuses every token."""
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class TokenVerifier:
    def __init__(self, public_key_pem: str, *, audience: str) -> None:
        # Parsed once: pyjwt would parse a PEM string on every verification.
        key = serialization.load_pem_public_key(public_key_pem.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the token verification key must be an Ed25519 public key")
        self._key = key
        self.audience = audience
        self._verified: dict[str, Claims] = {}

    def verify(self, token: str) -> Claims:
        """The token's claims; raises InvalidToken. Verified tokens are remembered until they
        expire (a signature check costs more than the rest of a small call)."""
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None and cached.expires_at > now:
            return cached
        claims = self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=_ALGORITHMS,
                audience=self.audience,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("token not valid for this service") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("invalid token") from exc
        generation = payload.get("gen", 0)
        if type(generation) is not int:
            raise InvalidToken("invalid token")
        return Claims(
            subject=str(payload["sub"]),
            audience=self.audience,
            expires_at=payload["exp"],
            generation=generation,
        )


class ServiceTokenSource:
    """Mints short-lived service tokens for outgoing internal calls, renewing before expiry."""

    def __init__(
        self,
        private_key_pem: str,
        *,
        service: str,
        lifetime: int = 300,
        audience: str = INTERNAL_AUDIENCE,
    ) -> None:
        self._signer = TokenSigner(
            private_key_pem, issuer=service, audience=audience, lifetime=lifetime
        )
        self._service = service
        self._token = ""
        self._renew_at = 0.0

    def token(self) -> str:
        now = time.time()
        if now >= self._renew_at:
            self._token, lifetime = self._signer.sign(f"service:{self._service}")
            self._renew_at = now + lifetime / 2
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token()}"),)

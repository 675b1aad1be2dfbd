#!/usr/bin/env python3
"""A throwaway token issuer for scripts/check-generated: writes a JWKS for a test RSA key and
prints RS256 access tokens that a generated service accepts.

  test-issuer.py jwks KEY.pem OUT.json
  test-issuer.py token KEY.pem ISSUER AUDIENCE SUBJECT TENANT ROLE
"""
import base64
import json
import sys
import time
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

KID = "check-generated"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def main(argv):
    if argv[1] == "jwks":
        pub = key(argv[2]).public_key().public_numbers()
        jwk = {"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": uint(pub.n), "e": uint(pub.e)}
        with open(argv[3], "w") as f:
            json.dump({"keys": [jwk]}, f)
    elif argv[1] == "token":
        _, _, pem, iss, aud, sub, tenant, role = argv
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        claims = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now, "exp": now + 600,
                  "jti": str(uuid.uuid4()), "tid": tenant, "roles": [role]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = key(pem).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        print(f"{signing_input}.{b64(sig)}")
    else:
        sys.exit(f"unknown command {argv[1]!r}")


if __name__ == "__main__":
    main(sys.argv)

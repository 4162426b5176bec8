"""DSSE envelopes signed with Ed25519.

See https://github.com/secure-systems-lab/dsse: the signature covers
``PAE(payloadType, payload)``, so a signature cannot be replayed onto another type.
The verifier checks the exact payload bytes first and only then lets anyone parse them;
the algorithm is fixed here (Ed25519), never taken from the envelope.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_bundles.errors import SignatureError
from firmware_bundles.keys import key_id

MAX_ENVELOPE_BYTES = 1 << 20


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    type_bytes = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def sign_envelope(payload_type: str, payload: bytes, key: Ed25519PrivateKey) -> bytes:
    """Return the JSON bytes of a DSSE envelope over ``payload`` signed by ``key``."""
    signature = key.sign(pae(payload_type, payload))
    doc = {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode()}
        ],
    }
    return json.dumps(doc, sort_keys=True, indent=1).encode()


def decode_envelope(data: bytes) -> Envelope:
    """Parse envelope JSON without trusting anything in it."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SignatureError(f"envelope is {len(data)} bytes, over the {MAX_ENVELOPE_BYTES} limit")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"envelope is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SignatureError("envelope must be a JSON object")
    payload_type = doc.get("payloadType")
    payload_b64 = doc.get("payload")
    sigs_raw = doc.get("signatures")
    if not isinstance(payload_type, str) or not isinstance(payload_b64, str):
        raise SignatureError("envelope needs string fields 'payloadType' and 'payload'")
    if not isinstance(sigs_raw, list) or not sigs_raw:
        raise SignatureError("envelope has no signatures")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
        sigs = []
        for item in sigs_raw:
            if not isinstance(item, dict):
                raise SignatureError(f"signature entry must be an object, got {item!r}")
            kid, sig = item.get("keyid", ""), item.get("sig")
            if not isinstance(kid, str) or not isinstance(sig, str):
                raise SignatureError("signature entry needs string 'keyid' and 'sig'")
            sigs.append((kid, base64.b64decode(sig, validate=True)))
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"envelope holds invalid base64: {exc}") from exc
    return Envelope(payload_type=payload_type, payload=payload, signatures=tuple(sigs))


def verify_envelope(
    data: bytes, expected_type: str, trusted: Mapping[str, Ed25519PublicKey]
) -> bytes:
    """Return the payload bytes if a key in ``trusted`` (keyid -> key) signed them.

    Raises:
        SignatureError: wrong payload type, no signature by a trusted key, or a bad one.
    """
    envelope = decode_envelope(data)
    if envelope.payload_type != expected_type:
        raise SignatureError(
            f"envelope payloadType is {envelope.payload_type!r}, expected {expected_type!r}"
        )
    message = pae(envelope.payload_type, envelope.payload)
    seen: list[str] = []
    for kid, sig in envelope.signatures:
        seen.append(kid)
        key = trusted.get(kid)
        if key is None:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            raise SignatureError(f"signature by trusted key {kid[:16]} does not verify") from None
        return envelope.payload
    raise SignatureError(
        f"envelope is not signed by a trusted key (signed by {[k[:16] for k in seen]}, "
        f"trusted: {[k[:16] for k in trusted]})"
    )

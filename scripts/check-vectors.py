#!/usr/bin/env python3
"""An independent reading of docs/protocol.md: recompute every digest and signature of the
test vectors in schemas/vectors/ with Python's json and `cryptography`, without ammotrace.

RFC 8785 for these documents (strings, integers, booleans, null; no floats) is json.dumps
with sorted keys, no whitespace and UTF-8 output; keys sort by UTF-16 code units, which for
the ASCII keys used here is plain sorting.

Usage: scripts/check-vectors.py [schemas/vectors]
"""
import base64
import hashlib
import json
import pathlib
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def jcs(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def tree_root(leaf: bytes, index: int, size: int, path: list) -> bytes | None:
    """The root an RFC 6962 audit path leads to from a leaf (RFC 9162 §2.1.3.2), or None when
    the path has the wrong length for the index and size."""
    if not 0 <= index < size:
        return None
    fn, sn, node = index, size - 1, sha256(b"\x00" + leaf)
    for sibling in path:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            node = sha256(b"\x01" + sibling + node)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            node = sha256(b"\x01" + node + sibling)
        fn, sn = fn >> 1, sn >> 1
    return node if sn == 0 else None


def signed_bytes(envelope):
    """JCS(claims), or for claims signed in a tree the tree head once the claims' leaf is shown
    to lead to its root; None when it does not."""
    claims = jcs(envelope["claims"])
    tree = envelope.get("tree")
    if tree is None:
        return claims
    path = [unb64(h) for h in tree["path"]]
    if tree_root(sha256(claims), tree["index"], tree["size"], path) != unb64(tree["root"]):
        return None
    return jcs({"kind": "ammotrace/claims-tree/1", "root": tree["root"], "size": tree["size"]})


def check(envelope, public_key):
    claims = envelope["claims"]
    key = Ed25519PublicKey.from_public_bytes(unb64(public_key))
    if claims["digests"] != sorted(set(claims["digests"])):
        return "UnsortedDigests"
    message = signed_bytes(envelope)
    if message is None:
        return "Tree"
    try:
        key.verify(unb64(envelope["sig"]), message)
    except InvalidSignature:
        return "BadSignature"
    seen = set()
    for salt, path, value in envelope["disclosures"]:
        if path in seen:
            return "DuplicatePath"
        seen.add(path)
        if b64(hashlib.sha256(jcs([salt, path, value])).digest()) not in claims["digests"]:
            return "Unlisted"
    return None


def main() -> int:
    folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "schemas/vectors")
    failures = 0
    for path in sorted(folder.glob("*.json")):
        vector = json.loads(path.read_text())
        key = vector["key"]
        expected = vector.get("error")
        if "envelopes" in vector:
            envelopes = vector["envelopes"]
            results = [check(e, key["public_key"]) for e in envelopes]
            got = next((r for r in results if r is not None), None)
            ok = got is None and all(
                b64(sha256(jcs(e["claims"]))) == leaf and e["sig"] == vector["sig"]
                for e, leaf in zip(envelopes, vector["leaves"])
            )
            ok = ok and signed_bytes(envelopes[0]).decode() == vector["signed_jcs"]
            print(f"{'ok  ' if ok else 'FAIL'} {path.name}: expected valid, got {got or 'valid'}")
            failures += not ok
            continue
        got = check(vector["envelope"], key["public_key"])
        ok = (got is None) if expected is None else (expected.startswith(got or "-"))
        if expected is None:
            envelope = vector["envelope"]
            ok = ok and jcs(envelope["claims"]).decode() == vector["signed_jcs"]
            ok = ok and all(
                vector["digests"][p] == b64(hashlib.sha256(jcs([s, p, v])).digest())
                for s, p, v in envelope["disclosures"]
            )
            ok = ok and check(vector["view"]["envelope"], key["public_key"]) is None
        print(f"{'ok  ' if ok else 'FAIL'} {path.name}: expected {expected or 'valid'}, got {got or 'valid'}")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

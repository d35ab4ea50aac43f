#!/usr/bin/env python3
"""Check schemas/seizure-record.schema.json against the shared samples, the dev set and a list
of records that must be rejected.

Usage: scripts/validate-schema.py [--data DIR]   (default DIR: ../shared/data beside the checkout)

Validates with the `jsonschema` PyPI package (draft 2020-12). It also applies the two checks the
node makes beyond the schema: no non-integer number anywhere, and every country code either in
node/data/iso3166_alpha3.txt or in a user-assigned range. Exits 1 when a good record is rejected
or a bad one accepted.
"""

import argparse
import copy
import json
import re
import sys
from pathlib import Path

try:
    from jsonschema import Draft202012Validator
except ImportError:
    sys.exit("validate-schema: the 'jsonschema' package is missing; install it with "
             "`python3 -m pip install jsonschema` (4.18 or later)")

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "seizure-record.schema.json"
ISO_LIST = ROOT / "node" / "data" / "iso3166_alpha3.txt"
USER_ASSIGNED = re.compile(r"^(AA[A-Z]|Q[M-Z][A-Z]|X[A-Z]{2}|ZZ[A-Z])$")


def pointer(path):
    """RFC 6901 JSON Pointer for a jsonschema error path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def show(ptr):
    """A pointer for display: the empty pointer (the whole record) is written as "" (root)."""
    return ptr or '"" (root)'


def floats(value, path=()):
    """Pointers of every JSON number that is not an integer (the node refuses them all)."""
    if isinstance(value, float):
        yield pointer(path)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from floats(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from floats(v, path + (i,))


def country_codes(record):
    """(pointer, code) of every country-code field the schema defines."""
    def at(path, v):
        if isinstance(v, str):
            yield pointer(path), v
    ev = record.get("event") if isinstance(record.get("event"), dict) else {}
    loc = ev.get("location") if isinstance(ev.get("location"), dict) else {}
    yield from at(("originating_state",), record.get("originating_state"))
    yield from at(("event", "location", "country"), loc.get("country"))
    sc = record.get("supply_chain") or {}
    for key, field in (("suspected_origin", "country"), ("last_lawful_owner", "state")):
        if isinstance(sc.get(key), dict):
            yield from at(("supply_chain", key, field), sc[key].get(field))
    for n, stop in enumerate(sc.get("route") or []):
        if isinstance(stop, dict):
            yield from at(("supply_chain", "route", n, "country"), stop.get("country"))
    for n, item in enumerate(record.get("items") or []):
        if not isinstance(item, dict):
            continue
        for key, field in (("manufacture", "country"), ("lawful_end_user", "state")):
            if isinstance(item.get(key), dict):
                yield from at(("items", n, key, field), item[key].get(field))
        hs = item.get("headstamp")
        if isinstance(hs, dict) and isinstance(hs.get("interpretation"), dict):
            yield from at(("items", n, "headstamp", "interpretation", "manufacturer_country"),
                          hs["interpretation"].get("manufacturer_country"))


def problems(validator, official, record):
    """Every reason the node would refuse the record: (pointer, keyword, message)."""
    out = [(pointer(e.absolute_path), e.validator or "false", e.message)
           for e in validator.iter_errors(record)]
    out += [(p, "no-floats", "number with a fraction or exponent") for p in floats(record)]
    if not out:
        out += [(p, "country-list", f"{c!r} is not an ISO 3166-1 alpha-3 code")
                for p, c in country_codes(record)
                if c not in official and not USER_ASSIGNED.match(c)]
    return sorted(out)


def bad_cases(base):
    """(name, record) pairs the node must reject, each one change away from a valid record."""
    def change(fn):
        r = copy.deepcopy(base)
        fn(r)
        return r

    def set_point(r):
        r["event"]["location"]["point"] = {"lat": -4.05, "lon": "39.67"}

    return [
        ("missing items", change(lambda r: r.pop("items"))),
        ("items: []", change(lambda r: r.update(items=[]))),
        ("item_category \"banana\"", change(lambda r: r["items"][0].update(item_category="banana"))),
        ("originating_state \"xa\"", change(lambda r: r.update(originating_state="xa"))),
        ("originating_state \"XA1\"", change(lambda r: r.update(originating_state="XA1"))),
        ("location.country \"12\"", change(lambda r: r["event"]["location"].update(country="12"))),
        ("quantity.count 1.5", change(lambda r: r["items"][0]["quantity"].update(count=1.5))),
        ("quantity.count \"many\"", change(lambda r: r["items"][0]["quantity"].update(count="many"))),
        ("point.lat as a float number", change(set_point)),
        ("event not an object", change(lambda r: r.update(event="seizure"))),
        ("sharing.tlp \"PURPLE\"", change(lambda r: r["sharing"].update(tlp="PURPLE"))),
        # beyond the schema: the node's own checks
        ("originating_state \"ABC\" (not assigned)", change(lambda r: r.update(originating_state="ABC"))),
        ("quantity.count 1.0 (integral float)", change(lambda r: r["items"][0]["quantity"].update(count=1.0))),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    official = {line.strip() for line in ISO_LIST.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    print(f"schema {SCHEMA.relative_to(ROOT)} (jsonschema {_version()}), "
          f"{len(official)} official country codes")
    failed = False

    samples = sorted((args.data / "samples").glob("record-*.json"))
    ok = 0
    for path in samples:
        found = problems(validator, official, json.loads(path.read_text(encoding="utf-8")))
        ok += not found
        for p, kw, msg in found:
            print(f"  REJECTED {path.name}: {show(p)} [{kw}] {msg}")
    print(f"samples: {ok}/{len(samples)} accepted")
    failed |= ok != len(samples) or not samples

    dev = args.data / "dev-set" / "records.jsonl"
    total = ok = 0
    with dev.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            total += 1
            found = problems(validator, official, record)
            ok += not found
            for p, kw, msg in found[:3]:
                print(f"  REJECTED dev-set line {n}: {show(p)} [{kw}] {msg}")
    print(f"dev-set: {ok}/{total} accepted")
    failed |= ok != total or total == 0

    base = json.loads((args.data / "samples" / "record-1.json").read_text(encoding="utf-8"))
    cases = bad_cases(base)
    rejected = 0
    print("bad cases (each a one-field change to samples/record-1.json):")
    for name, record in cases:
        found = problems(validator, official, record)
        rejected += bool(found)
        print(f"  {'rejected' if found else 'ACCEPTED (wrong)':<16} {name}")
        for p, kw, msg in found:
            print(f"      {show(p)}  [{kw}]  {msg}")
    print(f"bad cases: {rejected}/{len(cases)} rejected")
    failed |= rejected != len(cases)

    print("FAIL" if failed else "OK")
    return 1 if failed else 0


def _version():
    try:
        from importlib.metadata import version
        return version("jsonschema")
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())

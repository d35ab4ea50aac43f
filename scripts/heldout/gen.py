#!/usr/bin/env python3
"""Held-out match-quality set for ammotrace, built from the domain rules (domain.md §2, §6;
ocr_confusions.csv; calibre_synonyms.csv; lot_number_examples.json; third_party strings),
not from the dev set.

Writes records.jsonl (physical lots seized 2-3 times + sibling / other-maker distractors +
background noise) and queries.jsonl (one variant category per query).
usage: gen.py OUTDIR   (deterministic, seed 20240611)
"""
import json
import os
import random
import re
import sys
import uuid

R = random.Random(20240611)
OUT = sys.argv[1] if len(sys.argv) > 1 else "."
# The project's shared data (next to the checkout), or AMMOTRACE_SHARED_DATA.
SHARED = os.environ.get(
    "AMMOTRACE_SHARED_DATA",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data"),
)

# ---------------------------------------------------------------- helpers

def rid():
    return "urn:uuid:" + str(uuid.UUID(int=R.getrandbits(128), version=4))


def simple_key(s):
    """Upper-case alphanumerics only (what an investigator would call 'the same characters')."""
    return "".join(c for c in s.upper() if c.isalnum() or c in "?*")


def osa(a, b):
    n, m = len(a), len(b)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + c)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[n][m]


def wild_to_re(p):
    return "^" + "".join("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in p) + "$"


def date(lo=2012, hi=2023):
    return f"{R.randint(lo, hi)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}"


def record(lot, hs, cal, state, when):
    item = {"item_id": "i1", "item_category": "small_arms_ammunition",
            "calibre": {"raw": cal},
            "quantity": {"count": R.randint(20, 20000), "unit": "rounds"}}
    if hs is not None:
        item["headstamp"] = {"present": True, "raw_transcription": hs}
    if lot is not None:
        item["lot"] = {"raw": lot}
    return {"record_id": rid(), "originating_state": "XAA",
            "event": {"event_type": "seizure", "context": [R.choice(["trafficking_interdiction", "cache", "armed_conflict", "crime_scene"])],
                      "date": {"start": when, "precision": "day"},
                      "location": {"country": state, "precision": "country"},
                      "seizing_agency": {"type": R.choice(["police", "customs", "military", "border_guard"])}},
            "items": [item], "sharing": {"tlp": "GREEN"}}

# ---------------------------------------------------------------- calibres
CAL_LABEL = {"5.56x45-nato": "5.56x45mm NATO", "7.62x51-nato": "7.62x51mm NATO", "12.7x99-nato": "12.7x99mm NATO",
             "9x19": "9x19mm", "7.62x39": "7.62x39mm", "5.45x39": "5.45x39mm", "7.62x54r": "7.62x54mmR",
             "9x18-makarov": "9x18mm Makarov", "12.7x108": "12.7x108mm", "7.62x25": "7.62x25mm Tokarev",
             "14.5x114": "14.5x114mm"}
CAL_R2 = {"5.56x45-nato": "5.56 NATO", "7.62x51-nato": "7.62 NATO", "12.7x99-nato": ".50 BMG", "9x19": "9mm Luger",
          "7.62x39": "7.62x39", "5.45x39": "5.45x39", "7.62x54r": "7.62x54R", "9x18-makarov": "9mm Makarov",
          "12.7x108": "12.7x108", "7.62x25": "7.62 Tokarev", "14.5x114": "14.5x114"}
# aliases from calibre_synonyms.csv (the csv is the source; a few picked per id)
import csv
SYN = {}
for row in csv.DictReader(open(os.path.join(SHARED, "calibre_synonyms.csv"), encoding="utf-8")):
    SYN[row["canonical_id"]] = [a for a in row["aliases"].split("|") if a]
# messy third-party strings (misp-galaxy, gunsnprices) that name one of our calibres
MESSY = {
    "7.62x39": ["7.62x39 Ammo", "Partizan 7.62x39 Ammo", "and Bellot 7.62x39 Ammo", "7.62 X 39", "7.62x39 Caliber", "7.62x39mm Russian"],
    "5.56x45-nato": ["5.56x45 Ammo", "Frontier 5.56x45 Ammo", "Partizan 5.56x45 Ammo", ".5.56mm", "556NATO", "USA 5.56x45 Ammo", "BLACK 5.56x45 Ammo", "5.56x45mm"],
    "7.62x51-nato": ["Partizan 7.62x51 Ammo", "& Bellot 7.62x51 Ammo", "762NATO", "7.62 X 51", "7.62x51 NATO", "7.62 NATO (7.62x51mm)", "7.62mm NATO (7.62x51)"],
    "9x19": ["9mm Ammo", "9mm Luger (9x19mm)", "9MM LUGER (9X19 PARA)", "9mm Lugar", "9x19 (PARA)", "Active Duty 9mm Ammo", "9mm Luger (9x19 Parabellum)", "9 mm x 19"],
    "7.62x54r": ["Partizan 7.62x54r Ammo", "7.62 X 54", "7.62 x 54R", "7.62 x 54mm", "7.62x54 Russian"],
    "9x18-makarov": ["9mm Makarov Ammo", "and Bellot 9mm Makarov Ammo", "9mm Makarov (9x18mm)", "9x18 Makarov"],
    "7.62x25": ["7.62x25mm Tokarev", "7.62 X 25", "7.62 TOKAREV", "7.62X25 TOKAREV (30 MAUSER)"],
    "12.7x99-nato": ["50 BMG Ammo", "50 Cal BMG"],
}
LOADS = {"5.56x45-nato": ["M855", "SS109", "5.56 M193", "5.56mm M855 ball"], "7.62x51-nato": ["M80", "7.62 M80 ball"],
         "7.62x39": ["7.62 PS", "PS (57-N-231)", "7.62 ПС гж"], "5.45x39": ["7N6", "5.45 7N10"],
         "12.7x108": ["12.7 B-32", "12.7 мм Б-32"], "9x19": ["9mm NATO DM11"], "7.62x54r": ["7.62x54R LPS"],
         "9x18-makarov": ["9x18 57-N-181S"], "14.5x114": ["14.5 B-32"], "12.7x99-nato": ["M33 ball .50", "M2 AP .50"]}
SCRIPT_CAL = {"7.62x39": ["7,62х39", "7,62 мм обр. 1943 г.", "٧٫٦٢×٣٩", "７．６２×３９", "7.62×39 мм"],
              "5.45x39": ["5,45х39", "5,45 мм", "٥٫٤٥×٣٩", "５．４５×３９"],
              "7.62x54r": ["7,62х54R", "7,62х54 мм", "٧٫٦٢×٥٤R"], "12.7x108": ["12,7х108", "12,7 мм ДШК", "١٢٫٧×١٠٨"],
              "5.56x45-nato": ["5,56х45", "٥٫٥٦×٤٥", "５.５６×４５"], "7.62x51-nato": ["7,62х51", "٧٫٦٢×٥١"],
              "9x19": ["9х19", "٩×١٩", "９×１９"], "9x18-makarov": ["9 мм ПМ", "9х18", "٩×١٨"], "7.62x25": ["7,62х25", "7,62 мм ТТ"],
              "12.7x99-nato": ["12,7х99"], "14.5x114": ["14,5 мм КПВТ", "14,5х114"]}
BARE = {"7.62x39": "7.62mm", "7.62x51-nato": "7.62mm", "7.62x54r": "7.62 mm", "7.62x25": "7.62mm", "5.56x45-nato": "5.56mm",
        "9x19": "9mm", "9x18-makarov": "9 mm", "12.7x108": "12.7mm", "12.7x99-nato": "12.7 mm", "5.45x39": "5.45mm", "14.5x114": "14.5mm"}

# ---------------------------------------------------------------- physical lots
MONTHS = "ABCDEFGHJKLM"
used_hs = set()
lots = []


def uniq_hs(maker, years):
    R.shuffle(years)
    for y in years:
        if (maker, y) not in used_hs:
            used_hs.add((maker, y))
            return y
    return None


def add(family, maker, yy, lot, cal, rotatable=False, suffix=""):
    lots.append(dict(family=family, maker=maker, yy=yy, lot=lot, cal=cal, rot=rotatable))

# MIL-STD-1168: maker symbol, YY, month letter (no I), interfix, -sequence, optional suffix
for maker, n, cals, yrs in [("LC", 13, ["5.56x45-nato", "7.62x51-nato", "12.7x99-nato"], range(0, 24)),
                            ("WCC", 8, ["5.56x45-nato", "7.62x51-nato", "9x19"], range(0, 24)),
                            ("FC", 6, ["5.56x45-nato", "9x19"], range(0, 24)),
                            ("TW", 3, ["5.56x45-nato", "7.62x51-nato"], range(0, 6)),
                            ("XYZ", 2, ["5.56x45-nato"], range(5, 10))]:
    for _ in range(n):
        y = uniq_hs(maker, [f"{v:02d}" for v in yrs])
        lot = f"{maker}{y}{R.choice(MONTHS)}{R.randint(0, 999):03d}-{R.randint(0, 999):03d}"
        if R.random() < 0.15:
            lot += R.choice("AB")
        add("mil", maker, y, lot, R.choice(cals))

SOV_F = ["539", "711", "188", "270", "17", "60", "38", "3"]
SOV_CAL = ["7.62x39", "7.62x39", "7.62x39", "5.45x39", "7.62x54r", "9x18-makarov", "12.7x108", "14.5x114"]
ROT_Y = ["60", "61", "66", "68", "69", "80", "81", "86", "88", "89", "90", "91", "96", "98", "99"]
# lot-year-factory ("21-85-539") and lot-year only ("213-85", factory on the headstamp)
for fam, n in [("sov", 28), ("sovshort", 20)]:
    for k in range(n):
        f = R.choice(SOV_F)
        rot = f == "188" and k % 2 == 0
        yrs = ROT_Y if rot else [str(v) for v in range(70, 92)]
        y = uniq_hs(f, list(yrs))
        if y is None:
            continue
        num = str(R.choice([R.randint(1, 99), R.randint(100, 999), R.randint(100, 999)]))
        if fam == "sovshort" and len(num) < 2:
            num = str(R.randint(10, 999))
        cal = R.choice(SOV_CAL)
        if cal == "5.45x39" and int(y) < 75:
            cal = "7.62x39"
        lot = f"{num}-{y}-{f}" if fam == "sov" else f"{num}-{y}"
        add(fam, f, y, lot, cal, rotatable=all(c in "01689" for c in f + y))

CHN_F = ["31", "61", "71", "311", "321", "661", "811", "945"]
for k in range(18):
    f = R.choice(["61", "661", "811"]) if k % 2 == 0 else R.choice(CHN_F)
    rot_ok = all(c in "01689" for c in f)
    y = uniq_hs(f, list(ROT_Y if rot_ok else [str(v) for v in range(70, 100)]))
    if y is None:
        continue
    num = str(R.randint(1, 999))
    add("chn", f, y, f"{f}-{y}-{num}", R.choice(["7.62x39", "7.62x39", "7.62x54r", "7.62x25", "12.7x108"]),
        rotatable=all(c in "01689" for c in f + y))

GEN = [("PPU", ["7.62x39", "7.62x54r", "9x19"]), ("S&B", ["9x19", "7.62x39"]), ("MKE", ["5.56x45-nato", "7.62x51-nato"]),
       ("POF", ["7.62x51-nato", "9x19"]), ("KF", ["5.56x45-nato", "7.62x39"]), ("PMP", ["5.56x45-nato"]),
       ("IMI", ["5.56x45-nato", "9x19"]), ("GFL", ["9x19"]), ("CBC", ["9x19"]), ("HP", ["9x19"]), ("RG", ["5.56x45-nato"]),
       ("FN", ["5.56x45-nato"]), ("MEN", ["9x19"]), ("IK", ["7.62x39"]), ("27", ["7.62x39"])]
for k in range(22):
    maker, cals = GEN[k % len(GEN)]
    y = uniq_hs(maker, [f"{v:02d}" for v in range(5, 24)])
    style = k % 3
    if style == 0:
        lot = f"{R.randint(1, 9999):04d}/20{y}"          # LOT 0012/2019 (EU elementary box)
    elif style == 1:
        lot = f"{y}-{R.randint(1, 9999):04d}"             # year-lot
    else:
        lot = f"{R.choice('KMRTXH')}{R.choice('KMRTXH')}{R.randint(1000, 9999)}{R.choice('ABCDEFH')}"  # maker alphanumeric
    add("gen", maker, y, lot, R.choice(cals))

# ---------------------------------------------------------------- stored transcriptions

def hs_canon(pl):
    return f"{pl['maker']} {pl['yy']}"


def lot_r2(pl):
    s = pl["lot"]
    f = pl["family"]
    if f == "mil":
        return R.choice(["LOT " + s, s.replace("-", " "), "L/N " + s, s.replace("-", "")])
    return R.choice(["LOT " + s.replace("-", "/"), s.replace("-", " "), "Lot No. " + s, s.replace("/", "-")])


def hs_r2(pl):
    a, b = pl["maker"], pl["yy"]
    return R.choice([f"{b} {a}", f"{b}/{a}", f"{a} | {b}", f"{b}, {a}"]) + (" ⊕" if pl["family"] == "mil" and R.random() < 0.5 else "")

AR = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FA = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
FW = {**{chr(c): chr(c - 0x21 + 0xFF01) for c in range(0x21, 0x7F)}, " ": "\u3000"}
CYR_HOMO = {"A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "K": "К", "M": "М", "O": "О", "P": "Р", "T": "Т", "X": "Х", "Y": "У"}
CYR_CODE = {"PPU": "ППУ", "IK": "ИК"}


def fw(s):
    return "".join(FW.get(c, c) for c in s)


def r3_variant(pl):
    """A third State that writes in another script."""
    f, lot, hs, cal = pl["family"], pl["lot"], hs_canon(pl), pl["cal"]
    style = R.choice(["ru", "ar", "fa", "fw"]) if f != "mil" else R.choice(["ru", "fw"])
    if style == "ru":
        L = "".join(CYR_HOMO.get(c, c) for c in lot)
        return ("партия " + L, " ".join(CYR_CODE.get(t, "".join(CYR_HOMO.get(c, c) for c in t)) for t in hs.split()),
                SCRIPT_CAL[cal][0], "ru")
    if style == "ar":
        return (lot.translate(AR), hs.translate(AR), next((c for c in SCRIPT_CAL[cal] if re.search("[٠-٩]", c)), CAL_LABEL[cal]), "ar")
    if style == "fa":
        return (lot.translate(FA), hs.translate(FA), CAL_LABEL[cal], "fa")
    return (fw(lot), fw(hs), next((c for c in SCRIPT_CAL[cal] if re.search("[０-９]", c)), fw(CAL_R2[cal])), "fw")


records = []
STATES = ["XBB", "XCC", "XDD", "XEE", "XFF"]
for i, pl in enumerate(lots):
    pl["id"] = f"pl{i:03d}"
    st = R.sample(STATES, 3)
    r1 = record(pl["lot"], hs_canon(pl), CAL_LABEL[pl["cal"]], st[0], date(2012, 2018))
    pl["r2_lot"], pl["r2_hs"] = lot_r2(pl), hs_r2(pl)
    r2 = record(pl["r2_lot"], pl["r2_hs"], CAL_R2[pl["cal"]], st[1], date(2012, 2018))
    pl["clean"] = [r1["record_id"], r2["record_id"]]
    pl["extra"] = []
    records += [r1, r2]
    pl["hs_records"] = [r1["record_id"], r2["record_id"]]
    if i % 5 in (1, 3):
        lot3, hs3, cal3, style = r3_variant(pl)
        r3 = record(lot3, hs3, cal3, st[2], date(2012, 2018))
        r3["_style"] = style
        pl["extra"] = [r3["record_id"]]
        pl["r3"] = dict(lot=lot3, hs=hs3, cal=cal3, style=style)
        records.append(r3)
        pl["hs_records"].append(r3["record_id"])
    pl["distractors"] = []
    pl["distractor_keys"] = []

# sibling lots: one digit apart in the lot / sequence number; same maker, year, calibre
for i, pl in enumerate(lots):
    if i % 2:
        continue
    lot = pl["lot"]
    if pl["family"] == "mil":
        m = re.match(r"^(.*-)(\d+)([A-Z]?)$", lot)
        pos = [m.start(2) + j for j in range(len(m.group(2)))]
    elif pl["family"] in ("sov", "sovshort"):
        pos = list(range(lot.index("-")))
    elif pl["family"] == "chn":
        pos = list(range(lot.rindex("-") + 1, len(lot)))
    else:
        pos = [j for j, c in enumerate(lot) if c.isdigit()]
        if "/" in lot:
            pos = [j for j in pos if j < lot.index("/")]
        elif re.match(r"^\d\d-", lot):
            pos = [j for j in pos if j > 2]
    j = pos[-1]
    d = str((int(lot[j]) + R.choice([1, 2, 9])) % 10)
    sib = lot[:j] + d + lot[j + 1:]
    r = record(sib, hs_canon(pl), CAL_LABEL[pl["cal"]], R.choice(STATES), date(2020, 2024))
    records.append(r)
    pl["distractors"].append(("sibling", r["record_id"]))
    pl["distractor_keys"].append(simple_key(sib))
    pl["hs_records"].append(r["record_id"])

# the same lot text from another factory/maker (lot numbers restart per factory and year)
OTHER = {"sovshort": SOV_F, "gen": [g[0] for g in GEN]}
for i, pl in enumerate(lots):
    if pl["family"] not in OTHER or (pl["family"] == "gen" and i % 2 == 0):
        continue
    others = [m for m in OTHER[pl["family"]] if m != pl["maker"] and (m, pl["yy"]) not in used_hs]
    om = R.choice(others)
    used_hs.add((om, pl["yy"]))
    same_cal = R.random() < 0.5
    cal = pl["cal"] if same_cal else R.choice([c for c in CAL_LABEL if c != pl["cal"]])
    r = record(pl["lot"], f"{om} {pl['yy']}", CAL_LABEL[cal], R.choice(STATES), date(2020, 2024))
    records.append(r)
    pl["distractors"].append(("other_maker_same_cal" if same_cal else "other_maker_other_cal", r["record_id"]))
    pl["distractor_keys"].append(simple_key(pl["lot"]))

# background: unrelated seizures in the same formats (density), never near a physical lot
phys_keys = [simple_key(pl["lot"]) for pl in lots]
bg = 0
all_makers = [("mil", m) for m in ["LC", "WCC", "FC", "TW"]] + [("sov", f) for f in SOV_F] + [("sovshort", f) for f in SOV_F] + \
             [("chn", f) for f in CHN_F] + [("gen", g[0]) for g in GEN]
bg_keys = []
while bg < 1500:
    fam, mk = R.choice(all_makers)
    y = f"{R.randint(70, 99) if fam in ('sov', 'sovshort', 'chn') else R.randint(0, 23):02d}"
    if (mk, y) in used_hs:
        continue
    if fam == "mil":
        lot = f"{mk}{y}{R.choice(MONTHS)}{R.randint(0, 999):03d}-{R.randint(0, 999):03d}"
        cal = R.choice(["5.56x45-nato", "7.62x51-nato", "9x19", "12.7x99-nato"])
    elif fam == "sov":
        lot = f"{R.randint(1, 999)}-{y}-{mk}"
        cal = R.choice(SOV_CAL)
    elif fam == "sovshort":
        lot = f"{R.randint(10, 999)}-{y}"
        cal = R.choice(SOV_CAL)
    elif fam == "chn":
        lot = f"{mk}-{y}-{R.randint(1, 999)}"
        cal = R.choice(["7.62x39", "7.62x54r", "7.62x25", "12.7x108"])
    else:
        lot = R.choice([f"{R.randint(1, 9999):04d}/20{y}", f"{y}-{R.randint(1, 9999):04d}"])
        cal = R.choice(["9x19", "5.56x45-nato", "7.62x39", "7.62x51-nato"])
    k = simple_key(lot)
    if min(osa(k, p) for p in phys_keys) < 3:
        continue
    r = record(lot, f"{mk} {y}", R.choice([CAL_LABEL[cal], CAL_R2[cal]]), R.choice(STATES), date())
    records.append(r)
    bg_keys.append(k)
    bg += 1

# ---------------------------------------------------------------- query variants
CHEAP = {"0": "OD", "1": "Il", "5": "S", "8": "B", "2": "Z", "6": "G", "O": "0", "I": "1", "S": "5", "B": "8", "Z": "2", "G": "6C", "C": "G", "D": "0", "U": "V", "V": "U"}
COSTLY = {"7": "T1", "T": "7", "4": "A", "A": "4", "E": "F", "F": "E", "M": "N", "N": "M", "P": "R", "R": "P", "3": "8", "8": "3", "5": "6", "6": "5", "1": "7", "0": "Q"}
DASHES = ["\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2015", "\u2212", "\uFE63", "\uFF0D"]
LABELS = ["LOT ", "Lot: ", "L/N ", "L/N: ", "Lot No. ", "LOT NO: ", "Lot#", "lot number ", "Batch ", "N° ", "№ ", "Партия ",
          "партия № ", "ПАРТИЯ: ", "批号 ", "批号：", "Lot-Nr. ", "Los-Nr. ", "Lot n° ", "Lote ", "Parti ", "Partie "]


def alnum_pos(s):
    return [i for i, c in enumerate(s) if c.isalnum()]


def v_sep(s, pl):
    opts = [s.replace("-", " ").replace("/", " "), s.replace("-", "").replace("/", ""), s.replace("-", "/"),
            s.replace("-", ".").replace("/", "."), s.replace("-", " - "), s.replace("/", " / "), s.replace("-", "_").replace("/", "_")]
    if pl["family"] == "mil":
        m = re.match(r"^([A-Z]+)(\d\d)([A-Z])(\d+)-(\d+)([A-Z]?)$", s)
        opts += [f"{m[1]} {m[2]} {m[3]} {m[4]}-{m[5]}{m[6]}", f"{m[1]}-{m[2]}{m[3]}{m[4]}-{m[5]}{m[6]}", f"{m[1]}-{m[2]}-{m[3]}-{m[4]}-{m[5]}{m[6]}"]
    opts.append(re.sub(r"(?<=[A-Z])(?=\d)|(?<=\d)(?=[A-Z])", " ", s))
    opts = [o for o in opts if o != s]
    return R.choice(opts) if opts else None


def v_label(s, pl):
    return R.choice(LABELS) + s


def v_case(s, pl):
    if not any(c.isalpha() for c in s):
        return None
    return R.choice([s.lower(), "".join(c.lower() if R.random() < .5 else c for c in s)])


def subst(s, table, n=1):
    pos = [i for i, c in enumerate(s) if c in table]
    if len(pos) < n:
        return None
    out = list(s)
    for i in R.sample(pos, n):
        out[i] = R.choice(table[s[i]])
    return "".join(out)


def v_ocr_cheap(s, pl):
    return subst(s, CHEAP, R.choice([1, 1, 2]))


def v_ocr_pipe(s, pl):
    return subst(s, {"1": "|"})


def v_ocr_costly(s, pl):
    return subst(s, COSTLY, 1)


def v_ocr_multichar(s, pl):
    if "W" in s:
        return s.replace("W", "VV", 1)
    if "M" in s:
        return s.replace("M", "rn", 1)
    if "D" in s:
        return s.replace("D", "cl", 1)
    return None


def v_cyr_letters(s, pl):
    if not any(c in CYR_HOMO for c in s):
        return None
    return "".join(CYR_HOMO.get(c, c) for c in s)


def v_cyr_digit(s, pl):
    """Cyrillic Ze typed/OCR'd for the digit 3 (ocr_confusions: З,3,0.3), Cyrillic О for 0."""
    if "3" in s:
        i = R.choice([i for i, c in enumerate(s) if c == "3"])
        return s[:i] + "З" + s[i + 1:]
    if "0" in s:
        i = R.choice([i for i, c in enumerate(s) if c == "0"])
        return s[:i] + "О" + s[i + 1:]
    return None


def v_arabic(s, pl):
    return s.translate(AR)


def v_persian(s, pl):
    return s.translate(FA)


def v_arabic_rlm(s, pl):
    return "\u200f" + s.translate(AR).replace("-", "\u200f-\u200f").replace("/", "\u200f/\u200f")


def v_fullwidth(s, pl):
    return fw(s)


def v_dash(s, pl):
    if "-" not in s and "/" not in s:
        return None
    d = R.choice(DASHES)
    return s.replace("-", d).replace("/", d)


def v_invisible(s, pl):
    ch = R.choice(["\u200b", "\u00ad", "\u00a0", "\u202f", "\u2060"])
    i = R.choice(alnum_pos(s)[1:])
    return s[:i] + ch + s[i:]


def v_worn_q1(s, pl):
    i = R.choice(alnum_pos(s))
    return s[:i] + "?" + s[i + 1:]


def v_worn_q2(s, pl):
    p = alnum_pos(s)
    if len(p) < 6:
        return None
    a, b = sorted(R.sample(p, 2))
    return s[:a] + "?" + s[a + 1:b] + "?" + s[b + 1:]


def v_worn_star(s, pl):
    p = alnum_pos(s)
    if len(p) < 5:
        return None
    if R.random() < .5:
        k = R.choice([2, 3])
        return s[:p[-k]] + "*"
    a = R.choice(p[1:-2])
    return s[:a] + "*" + s[a + 2:]


def v_drop(s, pl):
    i = R.choice(alnum_pos(s))
    return s[:i] + s[i + 1:]


def v_insert(s, pl):
    i = R.choice(alnum_pos(s))
    c = R.choice([s[i], str(R.randint(0, 9))])
    return s[:i] + c + s[i:]


def v_swap(s, pl):
    p = [i for i in alnum_pos(s) if i + 1 < len(s) and s[i + 1].isalnum() and s[i] != s[i + 1]]
    if not p:
        return None
    i = R.choice(p)
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


# lot field conventions (domain §2.4 and lot_number_examples.json: "партия 21-85 завод 17" = "21-85-17")
def v_zavod(s, pl):
    if pl["family"] != "sov":
        return None
    n, y, f = s.split("-")
    return f"партия {n}-{y} завод {f}"


def v_factory_first(s, pl):
    if pl["family"] == "sov":
        n, y, f = s.split("-")
        return R.choice([f"{f} {n}-{y}", f"{f} / {n}-{y}"])
    if pl["family"] == "chn":
        f, y, n = s.split("-")
        return f"{n}-{y}-{f}"
    return None


def v_year4(s, pl):
    if pl["family"] in ("sov", "sovshort"):
        parts = s.split("-")
        parts[1] = "19" + parts[1]
        return "-".join(parts)
    if pl["family"] == "chn":
        f, y, n = s.split("-")
        return f"{f}-19{y}-{n}"
    if pl["family"] == "gen" and "/" in s:
        a, b = s.split("/")
        return f"{a}/{b[2:]}"
    return None


def v_factory_omitted(s, pl):
    """Crate stencil '21-85' with the factory on another line / only on the headstamp."""
    if pl["family"] != "sov":
        return None
    n, y, f = s.split("-")
    return f"{n}-{y}"


def v_factory_appended(s, pl):
    """domain.md golden test 2: '21-85 539' (crate) = '21-85-539'; here for lots stored without the factory."""
    if pl["family"] != "sovshort":
        return None
    return R.choice([f"{s} {pl['maker']}", f"{s}-{pl['maker']}", f"{s} | {pl['maker']}"])


LOT_CATS = {
    "baseline": lambda s, pl: s,
    "lot_sep": v_sep, "lot_label": v_label, "lot_case": v_case, "lot_ocr_cheap": v_ocr_cheap, "lot_ocr_pipe_for_1": v_ocr_pipe,
    "lot_ocr_costly": v_ocr_costly, "lot_ocr_multichar": v_ocr_multichar, "lot_cyr_homoglyph": v_cyr_letters,
    "lot_cyr_Ze_for_3": v_cyr_digit, "lot_arabic_indic": v_arabic, "lot_persian": v_persian, "lot_arabic_rlm": v_arabic_rlm,
    "lot_fullwidth": v_fullwidth, "lot_dash": v_dash, "lot_invisible": v_invisible, "lot_worn_q1": v_worn_q1,
    "lot_worn_q2": v_worn_q2, "lot_worn_star": v_worn_star, "lot_drop1": v_drop, "lot_insert1": v_insert, "lot_swap2": v_swap,
    "lot_zavod_label": v_zavod, "lot_factory_omitted": v_factory_omitted, "lot_factory_appended": v_factory_appended, "lot_factory_first": v_factory_first, "lot_year_digits": v_year4,
}
EDIT_CATS = {"lot_drop1", "lot_insert1", "lot_swap2", "lot_ocr_costly", "lot_ocr_multichar", "lot_worn_q1", "lot_worn_q2",
             "lot_worn_star", "lot_ocr_cheap", "lot_cyr_Ze_for_3", "lot_ocr_pipe_for_1"}


def ambiguous(qlot, pl):
    """True if some distractor/background lot is as close to the query lot as the true lot."""
    q = simple_key(qlot)
    true = simple_key(pl["lot"])
    if "?" in q or "*" in q:
        rx = re.compile(wild_to_re(q))
        return any(rx.match(k) for k in pl["distractor_keys"] + bg_keys if k != true)
    dt = osa(q, true)
    return any(osa(q, k) <= dt for k in pl["distractor_keys"] if k != true)


# headstamp variants, on the canonical "MAKER YY"
ROT = {"0": "0", "1": "1", "6": "9", "8": "8", "9": "6"}


def h_order(pl):
    a, b = pl["maker"], pl["yy"]
    return R.choice([f"{b} {a}", f"{b}/{a}", f"{b} | {a}", f"{a}; {b}", f"{b},{a}", f"{a}  {b}", f"{b}\\{a}", f"{a}: {b}", f"[{a}] [{b}]"])


def h_sep_dash(pl):
    a, b = pl["maker"], pl["yy"]
    return R.choice([f"{a}-{b}", f"{b}-{a}", f"{a}\u2013{b}", f"{a}.{b}", f"{a}_{b}", f"{a} \u2014 {b}"])


def h_clock(pl):
    a, b = pl["maker"], pl["yy"]
    return R.choice([f"{a} (12) / {b} (6)", f"12h {a}, 6h {b}", f"{a}@12 {b}@6", f"12 o'clock: {a}; 6 o'clock: {b}", f"{a} at 12, {b} at 6"])


def h_symbol(pl):
    a, b = pl["maker"], pl["yy"]
    sym = R.choice(["⊕", "+", "(NATO)", "NATO cross", "(+)", "★", "*", "✠"])
    return R.choice([f"{a} {sym} {b}", f"{a} {b} {sym}", f"{sym} {a} {b}"])


def h_ocr_cheap(pl):
    t = subst(pl["maker"] + " " + pl["yy"], CHEAP, 1)
    return t


def h_ocr_costly(pl):
    return subst(pl["maker"] + " " + pl["yy"], COSTLY, 1)


def h_worn_q(pl):
    s = pl["maker"] + " " + pl["yy"]
    i = R.choice(alnum_pos(s))
    return s[:i] + "?" + s[i + 1:]


def h_worn_code(pl):
    """maker code illegible, year legible: '?? 17' (one ? per character, domain §2.3)."""
    return f"{'?' * len(pl['maker'])} {pl['yy']}"


def h_worn_year(pl):
    """year illegible: inherently matches every year of that maker (ties expected)."""
    return R.choice([f"{pl['maker']} ??", f"{pl['maker']} *"])


def h_rotated(pl):
    if not pl["rot"]:
        return None
    toks = [pl["maker"], pl["yy"]]
    return " ".join("".join(ROT[c] for c in reversed(t)) for t in reversed(toks))


def h_cyr(pl):
    a, b = pl["maker"], pl["yy"]
    if a in CYR_CODE:
        return f"{CYR_CODE[a]} {b}"
    if any(c in CYR_HOMO for c in a):
        return "".join(CYR_HOMO.get(c, c) for c in a) + " " + b
    if "I" in a:  # Ukrainian/Belarusian І (U+0406), identical glyph to Latin I
        return a.replace("I", "\u0406") + " " + b
    return None


def h_arabic(pl):
    s = f"{pl['maker']} {pl['yy']}"
    return R.choice([s.translate(AR), s.translate(FA)])


def h_arabic_rlm(pl):
    return f"{pl['maker']} \u200f{pl['yy'].translate(AR)}\u200f"


def h_fullwidth(pl):
    return fw(f"{pl['maker']} {pl['yy']}")


def h_invisible(pl):
    a, b = pl["maker"], pl["yy"]
    ch = R.choice(["\u200b", "\u00ad", "\u2060"])
    return R.choice([f"{a}{ch} {b}", f"{a[0]}{ch}{a[1:]} {b}", f"{a}\u00a0{b}"])


def h_case(pl):
    if not any(c.isalpha() for c in pl["maker"]):
        return None
    return f"{pl['maker'].lower()} {pl['yy']}"


def h_split_code(pl):
    a = pl["maker"]
    if len(a) < 2 or a.isdigit():
        return None
    if a == "S&B":
        return R.choice(["S & B", "SB", "S+B"]) + " " + pl["yy"]
    return " ".join(a) + " " + pl["yy"]


def h_glued(pl):
    """code and year typed without a separator ('LC17', 'WCC05'); letter codes only (digit codes would be ambiguous)."""
    if pl["maker"].isdigit():
        return None
    return pl["maker"] + pl["yy"]


def h_digit_spaced(pl):
    a = pl["maker"]
    if not a.isdigit() or len(a) < 3:
        return None
    return f"{a[0]} {a[1:]} {pl['yy']}" if R.random() < .5 else f"{' '.join(a)} {pl['yy']}"


HS_CATS = {"hs_canonical": lambda pl: hs_canon(pl), "hs_order_sep": h_order, "hs_sep_dash_dot": h_sep_dash, "hs_clock": h_clock,
           "hs_symbol": h_symbol, "hs_ocr_cheap": h_ocr_cheap, "hs_ocr_costly": h_ocr_costly, "hs_worn_q": h_worn_q,
           "hs_worn_code": h_worn_code, "hs_worn_year_AMBIGUOUS": h_worn_year, "hs_rotated": h_rotated, "hs_cyrillic": h_cyr, "hs_arabic_persian": h_arabic,
           "hs_arabic_rlm": h_arabic_rlm, "hs_fullwidth": h_fullwidth, "hs_invisible": h_invisible, "hs_case": h_case,
           "hs_split_code": h_split_code, "hs_glued": h_glued, "hs_digit_spaced": h_digit_spaced}


def c_alias(pl):
    opts = [a for a in SYN[pl["cal"]] if a not in (CAL_LABEL[pl["cal"]], CAL_R2[pl["cal"]])]
    return R.choice(opts)


def c_messy(pl):
    return R.choice(MESSY[pl["cal"]]) if pl["cal"] in MESSY else None


def c_load(pl):
    return R.choice(LOADS[pl["cal"]]) if pl["cal"] in LOADS else None


def c_script(pl):
    return R.choice(SCRIPT_CAL[pl["cal"]]) if pl["cal"] in SCRIPT_CAL else None


def c_bare(pl):
    return BARE[pl["cal"]]


CAL_CATS = {"cal_alias": c_alias, "cal_messy_3rdparty": c_messy, "cal_load": c_load, "cal_script": c_script, "cal_bare_diameter": c_bare}

queries = []


def q(cat, pl, lot, hs, cal, expected, extra, distractors, note=""):
    queries.append(dict(query_id=f"q{len(queries)}", category=cat, pl=pl["id"], lot=lot, headstamp=hs, calibre=cal,
                        expected=expected, extra_relevant=extra, distractors=distractors, note=note))


for pl in lots:
    base_hs, base_cal = hs_canon(pl), CAL_LABEL[pl["cal"]]
    for cat, fn in LOT_CATS.items():
        for attempt in range(30):
            v = fn(pl["lot"], pl)
            if v is None:
                break
            if cat in EDIT_CATS and ambiguous(v, pl):
                v = None
                continue
            if cat not in ("baseline",) and v == pl["lot"]:
                v = None
                continue
            break
        if v is None:
            continue
        q(cat, pl, v, base_hs, base_cal, pl["clean"], pl["extra"], pl["distractors"])
    # one lot-only variant of the edit categories: an investigator with a crate label only
    for cat in ("lot_drop1", "lot_swap2", "lot_worn_q1"):
        for attempt in range(30):
            v = LOT_CATS[cat](pl["lot"], pl)
            if not ambiguous(v, pl):
                break
        else:
            continue
        q(cat + "__lot_only", pl, v, None, None, pl["clean"], pl["extra"], pl["distractors"])
    # headstamp variants: (a) alone (fired cases: no lot), (b) with the lot, vs other-maker distractors
    hs_rel = pl["hs_records"]
    for cat, fn in HS_CATS.items():
        v = fn(pl)
        if v is None:
            continue
        q(cat + "__hs_only", pl, None, v, base_cal, [r for r in hs_rel if r not in pl["extra"]], pl["extra"], [])
        if any(k.startswith("other_maker") for k, _ in pl["distractors"]):
            q(cat + "__with_lot", pl, pl["lot"], v, None, pl["clean"], pl["extra"], pl["distractors"])
    # calibre variants: with the exact lot (agreement is read from match.calibre), and with a
    # one-edit lot (fuzzy lots are confined to the calibre family: a misread calibre drops them)
    fuzzy_lot = None
    for attempt in range(30):
        v = v_drop(pl["lot"], pl)
        if len(simple_key(v)) >= 4 and not ambiguous(v, pl):
            fuzzy_lot = v
            break
    for cat, fn in CAL_CATS.items():
        v = fn(pl)
        if v is None:
            continue
        q(cat, pl, pl["lot"], base_hs, v, pl["clean"], pl["extra"], pl["distractors"])
        if fuzzy_lot:
            q(cat + "__fuzzy_lot", pl, fuzzy_lot, None, v, pl["clean"], pl["extra"], pl["distractors"])
    # the exotic-script stored record, found from a canonical query
    if pl.get("r3"):
        q("stored_script_" + pl["r3"]["style"], pl, pl["lot"], base_hs, base_cal, pl["extra"], pl["clean"], pl["distractors"])

with open(f"{OUT}/records.jsonl", "w", encoding="utf-8") as f:
    for r in records:
        r = {k: v for k, v in r.items() if not k.startswith("_")}
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
with open(f"{OUT}/queries.jsonl", "w", encoding="utf-8") as f:
    for x in queries:
        f.write(json.dumps(x, ensure_ascii=False) + "\n")
with open(f"{OUT}/lots.json", "w", encoding="utf-8") as f:
    json.dump(lots, f, ensure_ascii=False, indent=0)
print(f"physical lots {len(lots)}, records {len(records)} (background {bg}), queries {len(queries)}")

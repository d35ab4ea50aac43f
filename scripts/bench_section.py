#!/usr/bin/env python3
"""Replaces (or appends) one marked section of docs/benchmarks.md, leaving the rest.

usage: bench_section.py FILE NAME < section.md
The section on stdin is written between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.
"""
import re
import sys

path, name = sys.argv[1], sys.argv[2]
body = sys.stdin.read().strip("\n")
section = f"<!-- {name}:begin -->\n{body}\n<!-- {name}:end -->\n"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# Benchmarks\n"
pattern = rf"<!-- {name}:begin -->.*?<!-- {name}:end -->\n?"
if re.search(pattern, text, flags=re.S):
    text = re.sub(pattern, lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
print(section)

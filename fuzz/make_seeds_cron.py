#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_cron (fuzz/corpus_cron/): one input per
corner of the syntax and per zone. An input is: zone byte, 8 bytes of
big-endian int64 instant (ms), the expression. Re-run after changing the
input format: python3 fuzz/make_seeds_cron.py"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus_cron")

# 2026-03-28T12:00:00Z, 2026-10-24T12:00:00Z, 2090-03-25T12:00:00Z
SPRING, FALL, FAR = 1774699200000, 1792843200000, 3794126400000
SEEDS = [
    (0, SPRING, "* * * * * *"),
    (0, SPRING, "*/15 0-30/2 1,2,3 ? JAN-MAR,DEC MON-FRI 2026-2030"),
    (0, SPRING, "0 0 0 29 2 ?"),
    (0, SPRING, "0 0 0 13 * FRI"),
    (0, SPRING, "@daily"),
    (0, SPRING, "@weekly"),
    (0, 0, "0 0 0 1 1 ? 1970,2100"),
    (1, SPRING, "0 30 2 * * *"),
    (1, FALL, "0 */15 * * * *"),
    (1, FAR, "0 0,30 2 * * SUN"),
    (2, FALL, "0 30 1 * * *"),
    (3, SPRING, "0 0 9 * * *"),
    (4, SPRING, "0 0 * * * *"),
    (5, FAR, "0 30 2 * * *"),
    (6, SPRING, "@hourly"),
    (0, SPRING, "* * * L * ?"),
    (0, SPRING, "* * * ? * 6#3"),
    (0, SPRING, "5-3 * * * * *"),
]

os.makedirs(OUT, exist_ok=True)
for i, (zone, at, expr) in enumerate(SEEDS):
    with open(os.path.join(OUT, "seed_%02d" % i), "wb") as f:
        f.write(bytes([zone]) + struct.pack(">q", at) + expr.encode())

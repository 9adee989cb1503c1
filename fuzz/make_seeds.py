#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_api (fuzz/corpus/): small inputs that walk
each stage and operation of fuzz_api.c's input grammar once, so a short run
starts from every corner instead of finding them by chance. Re-run it after
changing the grammar: python3 fuzz/make_seeds.py"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

def prelude(config=b"\x00", defs=b"\x00"):
    # config ops (count, ...), logger level, defs (count, ...), call before start
    return config + b"\x00" + defs + b"\x01"

def call(how, method, payload, opts=b"\x00", id_word=9):
    # op 0 (call), how (0 send, 1 notify, 2 send_sync, 3 notify_sync), type
    # (Fz), id (a word), method, payload, opts; notify and send_sync read one
    # more byte (callback / reply wanted)
    return bytes([0, how, 0, 0, id_word, method]) + payload + opts + (b"\x01" if how in (1, 2) else b"")

def act(action, arg=0, extra=b""):
    script = bytes([action, arg]) + extra
    return bytes([2, len(script)]) + script

seeds = {
    "echo": prelude() + call(0, 0, act(0)),
    "act_hostile_reply": prelude() + call(2, 1, act(1, 3)),
    "act_fail_codes": prelude() + call(2, 1, act(2, 1, b"\xff\xff\xfe\x0cmsg")),
    "act_twice": prelude() + call(2, 1, act(3, 2)) + call(2, 1, act(3, 1)),
    "act_accessors": prelude() + call(2, 1, act(8, 0, b"xyz")),
    "act_park_answer": prelude() + call(0, 1, act(4)) + b"\x04\x00\x03\xff\xff\xfe\x0c",
    "act_internal_call": prelude() + call(2, 1, act(6, 1)),
    "act_null_reply": prelude() + call(3, 1, act(7, 9)),
    "act_limit_reply": prelude() + call(2, 1, act(9, 1)),
    "hostile_payload": prelude() + call(2, 0, bytes([5, 0])) + call(0, 0, bytes([5, 2])),
    # opts: present, size index 2 (sizeof-1), flags 0x80 ...
    "hostile_opts": prelude() + call(2, 0, b"\x00", bytes([1, 2, 200, 0]) + b"\x01\x00\x00\x00\x00"),
    "fake_caller": prelude() + call(0, 2, b"\x00", bytes([1, 3, 0, 1, 5, 0, 0, 2]) + b"\xde\xad\xbe\xef\x00\x00\x00\x01"),
    "config_ops": bytes([3, 7, 0, 4, 35, 2, 0, 0x30, 4]) + b"\x00\x00\x00\x01" + call(0, 0, act(0)),
    "defs": prelude(defs=bytes([1, 0, 1, 3, 0, 0, 1, 0, 0, 4, 0, 4, 0, 2, 0])) + call(0, 0, act(0)),
    "stored_and_metrics": prelude() + bytes([7, 0, 0, 9, 1, 3, 1, 2, 3, 2]) + bytes([8, 1, 1]) + bytes([9, 4, 1, 2, 3, 4]),
    "stop_midway": prelude() + call(0, 1, act(4)) + bytes([11, 250]) + call(0, 0, act(0)),
}

os.makedirs(os.path.join(HERE, "corpus"), exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(HERE, "corpus", name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to fuzz/corpus/")

#!/usr/bin/env python3
"""Writes the seed inputs of fuzz_wire (fuzz/corpus_wire/): one selector byte
(0 envelope, 1 reply, 2 interrupt, 3 ack) then the protobuf message, encoded
here by hand (field numbers from proto/cruster.proto)."""
import os, sys

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def zz(n):  # sint32
    return (n << 1) ^ (n >> 31)

def f_varint(num, v):
    return varint(num << 3) + varint(v)

def f_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint((num << 3) | 2) + varint(len(b)) + b

def envelope(**kw):
    m = b""
    m += f_varint(1, kw.get("request_id", 42))
    m += f_bytes(2, kw.get("type", "Counter"))
    m += f_bytes(3, kw.get("id", "c-1"))
    m += f_bytes(4, kw.get("group", "default"))
    m += f_varint(5, kw.get("shard", 7))
    m += f_bytes(6, kw.get("method", "inc"))
    m += f_bytes(7, kw.get("payload", "5"))
    for k, v in kw.get("headers", []):
        m += f_bytes(8, f_bytes(1, k) + f_bytes(2, v))
    m += f_varint(9, 1) + f_varint(10, 1) + f_varint(11, 1234)
    if "key" in kw:
        m += f_bytes(12, kw["key"])
    m += f_varint(13, 1)
    m += f_bytes(14, kw.get("tp", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
    m += f_varint(15, kw.get("hops", 1)) + f_varint(16, 900) + f_varint(17, 1)
    return m

seeds = {
    "env_full": b"\x00" + envelope(headers=[("x-a", "1"), ("x-b", "two")], key="k-1"),
    "env_min": b"\x00" + f_bytes(2, "T") + f_bytes(3, "i") + f_bytes(4, "g") + f_bytes(6, "m"),
    "env_bad_shard": b"\x00" + envelope(shard=(1 << 64) - 3),
    "reply_chunk": b"\x01" + f_varint(1, 1) + f_varint(2, 3) + f_varint(3, 1) + f_bytes(4, "item"),
    "reply_exit": b"\x01" + f_varint(1, 1) + f_varint(2, 4) + f_varint(3, 2)
                  + f_varint(5, zz(-1005)) + f_bytes(6, "app"),
    "interrupt": b"\x02" + f_bytes(1, "T") + f_bytes(2, "i") + f_bytes(3, "g") + f_varint(4, 3),
    "ack": b"\x03" + f_varint(1, zz(-7)) + f_bytes(2, "full"),
}
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus_wire")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

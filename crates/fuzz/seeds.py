#!/usr/bin/env python3
"""Writes the seed corpora of the structure-aware targets (device, queue)
from the scenarios of crates/device/tests/state_machine.rs and
crates/daemon/tests/bad_input.rs, encoded the way `arbitrary` 1.x decodes
the targets' `Input` types: integers little endian, a bool is one byte
(low bit), an enum is a u32 whose `(v * variants) >> 32` is the variant
index, and every Vec is its elements each preceded by a 1 byte, then a 0.

Keep the variant lists below in the order of the enums in
fuzz_targets/device.rs and fuzz_targets/queue.rs. Run from crates/fuzz:
    python3 seeds.py
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = 4096
MIB = 1 << 20


def u8(v):
    return struct.pack("<B", v & 0xFF)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v)


def boolean(v):
    return u8(1 if v else 0)


def variant(index, count):
    """The smallest u32 that `arbitrary` maps to variant `index`."""
    return u32(-(-(index << 32) // count))


def vec(items):
    return b"".join(b"\x01" + item for item in items) + b"\x00"


# ---- device ---------------------------------------------------------------

STEPS = [
    "Create2d", "CreateBlob", "Attach", "Detach", "Unref", "Transfer",
    "SetScanout", "SetScanoutBlob", "Flush", "UpdateCursor", "MoveCursor",
    "AssignUuid", "GetEdid", "GetDisplayInfo", "Raw", "SetMemory", "Reset",
    "Disconnect", "Faults",
]


def step(name, *fields):
    return variant(STEPS.index(name), len(STEPS)) + b"".join(fields)


def dim(n):
    """Dim::Cursor for 64, Small below 70, else Large."""
    if n == 64:
        return variant(1, 4)
    if n < 70:
        return variant(0, 4) + u8(n)
    return variant(2, 4) + u16(n)


def rect(x, y, w, h):
    return dim(x) + dim(y) + dim(w) + dim(h)


XRGB = variant(0, 3)


def entry(page, pages=1, byte_offset=0):
    """Entry of `pages` whole pages at page number `page`."""
    offset = variant(0, 3) if byte_offset == 0 else variant(1, 3) + u16(byte_offset)
    return u16(page) + offset + variant(0, 3) + u8(pages - 1)


def device_input(steps, memory_limit=13, max_entries=63, scanouts=1):
    return u8(memory_limit) + u8(max_entries) + u8(scanouts) + vec(steps)


def device_seeds():
    create = lambda i, w, h: step("Create2d", u8(i), XRGB, dim(w), dim(h))
    attach = lambda i, entries: step("Attach", u8(i), vec(entries))
    transfer = lambda i, w, h, off=0: step("Transfer", u8(i), rect(0, 0, w, h), u32(off))
    pages = lambda numbers: [entry(n) for n in numbers]
    blob = lambda i, size, entries: step(
        "CreateBlob", u8(i), boolean(False), u8(0), u32(size), vec(entries))
    yield "attach_scattered_transfer", device_input([
        create(1, 64, 48), attach(1, pages([7, 2, 17])), transfer(1, 64, 48),
        step("SetScanout", u8(0), u8(1), rect(0, 0, 64, 48)),
        step("Flush", u8(1), rect(0, 0, 64, 48)),
    ])
    yield "evict_restore", device_input([
        create(1, 32, 64), attach(1, pages([3, 4])), transfer(1, 32, 64),
        step("Detach", u8(1)), attach(1, pages([9, 1])), transfer(1, 32, 64),
        step("Detach", u8(1)), step("Detach", u8(1)), step("Unref", u8(1)),
    ])
    yield "overlap_two_resources", device_input([
        create(1, 32, 32), create(2, 32, 32), attach(1, pages([5])),
        attach(2, pages([5, 6])), step("Detach", u8(1)), step("Unref", u8(2)),
    ])
    yield "blob_scanout", device_input([
        blob(3, 2 * PAGE, pages([1600, 1601])),
        step("SetScanoutBlob", u8(0), u8(3), rect(0, 0, 16, 16), dim(16), dim(16),
             u32(64), u32(0)),
        step("Flush", u8(3), rect(0, 0, 16, 16)),
        step("Detach", u8(3)), attach(3, pages([1602, 1603])), step("Unref", u8(3)),
    ])
    yield "memory_change", device_input([
        create(1, 64, 16), attach(1, pages([1536])), create(2, 64, 16),
        attach(2, [entry(2, 1, 0x800)]),
        step("SetMemory", u8(1)), step("SetMemory", u8(3)), step("SetMemory", u8(0)),
        step("Reset"),
    ])
    yield "cursor", device_input([
        create(4, 64, 64), attach(4, [entry(40, 4)]), transfer(4, 64, 64),
        step("UpdateCursor", u8(0), u8(4), u32(10), u32(10)),
        step("MoveCursor", u8(0), u32(20), u32(30)),
        step("AssignUuid", u8(4)), step("GetEdid", u8(0)), step("GetDisplayInfo"),
    ], scanouts=1)
    yield "faults_and_limits", device_input([
        step("Faults", u8(1), u8(1)), create(1, 64, 64), attach(1, [entry(8, 4)]),
        attach(1, [entry(8, 4)]), transfer(1, 64, 64), transfer(1, 8, 8, 4 * 64 * 8),
        step("Disconnect"), create(2, 2000, 2000),
    ], memory_limit=8, max_entries=2)
    yield "packed_subrect", device_input([
        create(1, 64, 64), attach(1, [entry(100, 4)]),
        step("Transfer", u8(1), rect(8, 8, 16, 16), u32(0)),
    ])


# ---- queue ----------------------------------------------------------------

EVENTS = ["Descriptor", "Write", "Publish", "Kick", "SetMemory", "Reset"]
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def event(name, *fields):
    return variant(EVENTS.index(name), len(EVENTS)) + b"".join(fields)


def slot(n, offset=0):
    return variant(0, 4) + u8(n) + u16(offset)


def desc(queue, index, addr, length, flags, next_):
    return event("Descriptor", boolean(queue), u16(index),
                 addr + u32(length) + u16(flags) + u16(next_))


def write(addr, data, queue=False):
    return event("Write", addr, boolean(queue), vec([u8(b) for b in data]))


def publish(queue, heads, jump=0):
    return event("Publish", boolean(queue), vec([u16(h) for h in heads]), u16(jump))


def kick(cursor):
    return event("Kick", boolean(cursor))


def hdr(type_):
    return struct.pack("<IIQIB3x", type_, 0, 0, 0, 0)


def queue_input(events, sizes=(7, 7), event_idx=False):
    return u8(sizes[0]) + u8(sizes[1]) + boolean(event_idx) + vec(events)


def request_chain(queue, head, slot_n, request, reply_len=64):
    """A two-descriptor chain: the request in slot `slot_n`, the reply
    right after it in the same slot."""
    return [
        write(slot(slot_n), request),
        desc(queue, head, slot(slot_n), len(request), F_NEXT, head + 1),
        desc(queue, head + 1, slot(slot_n, 0x8000), reply_len, F_WRITE, 0),
    ]


def queue_seeds():
    create = hdr(0x101) + struct.pack("<4I", 1, 2, 64, 16)
    attach = hdr(0x106) + struct.pack("<II", 1, 1) + struct.pack("<QII", 0x1000, 4096, 0)
    transfer = hdr(0x105) + struct.pack("<4IQII", 0, 0, 64, 16, 0, 1, 0)
    cursor = hdr(0x301) + struct.pack("<8I", 0, 5, 5, 0, 0, 0, 0, 0)
    yield "ctrl_create_attach_transfer", queue_input(
        request_chain(False, 0, 0, create) + request_chain(False, 2, 1, attach)
        + request_chain(False, 4, 2, transfer)
        + [publish(False, [0, 2, 4]), kick(False)])
    yield "cursor_move", queue_input(
        [write(slot(3), cursor), desc(True, 0, slot(3), len(cursor), 0, 0),
         publish(True, [0]), kick(True)])
    # Indirect: the table (two descriptors) is written into slot 5.
    table = struct.pack("<QIHH", 0x18_0000 + 4 * 0x1_0000, len(create), F_NEXT, 1)
    table += struct.pack("<QIHH", 0x18_0000 + 4 * 0x1_0000 + 0x8000, 64, F_WRITE, 0)
    yield "ctrl_indirect", queue_input(
        [write(slot(4), create), write(slot(5), table),
         desc(False, 0, slot(5), len(table), F_INDIRECT, 0),
         publish(False, [0]), kick(False)], event_idx=True)
    yield "ctrl_loop_and_bad_head", queue_input(
        [write(slot(0), create), desc(False, 0, slot(0), 24, F_NEXT, 1),
         desc(False, 1, slot(0), 24, F_NEXT, 0), publish(False, [0, 500]),
         kick(False), event("Reset"), event("SetMemory", u8(2)), kick(False)])
    yield "ctrl_out_of_ram", queue_input(
        [desc(False, 0, variant(2, 4) + u16(3), 64, F_NEXT, 1),
         desc(False, 1, variant(3, 4) + u64(1 << 40), 64, F_WRITE, 0),
         publish(False, [0], jump=3), kick(False)], event_idx=True)


def main():
    for target, seeds in (("device", device_seeds()), ("queue", queue_seeds())):
        out = os.path.join(HERE, "corpus", target)
        os.makedirs(out, exist_ok=True)
        for name, data in seeds:
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()

"""hlo.analysis: bytes read per parameter and collectives, counted from serialized modules (no runtime needed)."""

from __future__ import annotations

import hlo
from hlo import analysis, bf16, f32, s32


def test_whole_reads_slices_lookups_and_unused():
    spec = hlo.ParamSpec(x=f32[2, 4], w=f32[4, 3], table=f32[100, 3], ids=s32[2], stack=f32[5, 8], unused=f32[7],
                         half=bf16[16])

    def fn(p):
        rows = hlo.take(p.table, p.ids)                      # [2, 3]: two rows of the table
        layer = hlo.slice_in_dim(p.stack, 1, 2, 0)           # [1, 8]: one of five
        return {"y": hlo.dot(p.x, p.w) + rows, "layer": layer, "h": p.half + p.half}

    traffic = analysis.analyze(hlo.build("reads", spec, fn).serialize())
    reads = {p.name: p for p in traffic.parameters}
    assert [p.name for p in traffic.parameters] == [name for name, _ in spec]
    assert reads["x"].read_bytes == reads["x"].nbytes == 2 * 4 * 4
    assert reads["w"].read_bytes == 4 * 3 * 4
    assert reads["table"].nbytes == 100 * 3 * 4 and reads["table"].read_bytes == 2 * 3 * 4
    assert reads["stack"].read_bytes == 8 * 4
    assert reads["unused"].read_bytes == 0
    assert reads["half"].nbytes == reads["half"].read_bytes == 16 * 2 and reads["half"].dtype == "bf16"
    assert traffic.read_bytes() == sum(p.read_bytes for p in traffic.parameters)
    assert traffic.read_bytes({"x", "w"}) == 32 + 48
    assert traffic.collectives == []


def test_in_place_update_is_followed_to_its_readers():
    """A cache updated in place then read one layer at a time: the reads are the slices of the updated buffer, the
    write is the update; returning the buffer (the aliased output) reads nothing."""
    spec = hlo.ParamSpec(cache=f32[3, 10, 4], new=f32[1, 1, 4], pos=s32[()])

    def fn(p):
        zero = hlo.constant(0, s32)
        updated = hlo.dynamic_update_slice(p.cache, p.new, [zero, p.pos, zero])
        layer0 = hlo.slice_in_dim(updated, 0, 1, 0)          # [1, 10, 4]
        return {"cache": updated, "sum": hlo.reduce_sum(layer0, [0, 1, 2])}

    module = hlo.build("cache", spec, fn, aliases={"cache": "cache"})
    cache = analysis.analyze(module.serialize()).parameters[0]
    assert cache.name == "cache" and cache.nbytes == 3 * 10 * 4 * 4
    assert cache.read_bytes == 10 * 4 * 4
    assert cache.written_bytes == 4 * 4


def test_collectives_counted_with_their_bytes():
    spec = hlo.ParamSpec(x=f32[8, 2], y=s32[3])

    def fn(p):
        summed = hlo.all_reduce(p.x, "add", [[0, 1]])
        again = hlo.all_reduce(summed, "add", [[0, 1]])
        return {"a": again, "g": hlo.all_gather(p.y, 0, 2, [[0, 1]])}

    traffic = analysis.analyze(hlo.build("coll", spec, fn).serialize())
    assert traffic.collective_counts() == {"all-reduce": 2, "all-gather": 1}
    assert traffic.collective_bytes() == {"all-reduce": 2 * 8 * 2 * 4, "all-gather": 3 * 4}
    gather = next(c for c in traffic.collectives if c.opcode == "all-gather")
    assert gather.result_bytes == 2 * 3 * 4 and gather.group_size == 2


def test_reads_an_exported_file(tmp_path):
    module = hlo.build("file", hlo.ParamSpec(w=f32[4, 4]), lambda p: {"y": p.w * 2.0})
    path = tmp_path / "file.hlo.pb"
    path.write_bytes(module.serialize())
    traffic = analysis.analyze_file(path)
    assert traffic.name == "file" and traffic.read_bytes() == 64

"""The HDF5 format: round trips, contiguity (memory map), batch reads, atomic writes, refusals."""

import h5py
import numpy as np
import pytest

from scfdata.columns import Columns, concat
from scfdata.h5io import (
    AssemblyOutput,
    FormatError,
    ScfdataFile,
    StreamWriter,
    assemble,
    assemble_many,
    read_columns,
    write_columns,
)


def _memory_mapped(arr) -> bool:
    """Whether ``arr`` is a view of a memory map (numpy's or Python's mmap)."""
    import mmap

    while arr is not None:
        if isinstance(arr, (mmap.mmap, np.memmap)):
            return True
        arr = getattr(arr, "base", None) if not isinstance(arr, memoryview) else arr.obj
    return False


def block(n_configs, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(1, 6, n_configs)
    n_mol = rng.integers(0, 3, n_configs)
    N, M = int(n_atoms.sum()), int(n_mol.sum())
    return Columns(
        n_atoms=n_atoms,
        n_molecules=n_mol,
        configs={
            "energy": rng.normal(size=n_configs) + offset,
            "dipole": rng.normal(size=(n_configs, 3)),
            "pbc": np.zeros((n_configs, 3), bool),
            "cell": np.zeros((n_configs, 3, 3)),
            "config_type": np.array([f"t{k % 3}é" for k in range(n_configs)]),
        },
        atoms={"numbers": rng.integers(1, 9, N), "positions": rng.normal(size=(N, 3)),
               "forces": rng.normal(size=(N, 3))},
        molecules={"molecular_forces": rng.normal(size=(M, 3))},
        masks={"energy": rng.random(n_configs) > 0.3, "dipole": rng.random((n_configs, 3)) > 0.5,
               "forces": np.ones(n_configs, bool)},
    )


def test_stream_writer_round_trip_is_contiguous_and_memory_mapped(tmp_path):
    blocks = [block(13, s, offset=10 * s) for s in range(4)]
    w = StreamWriter(tmp_path / "a.h5", provenance={"inputs": [{"path": "x"}]})
    for b in blocks:
        w.append(b)
    w.add_rejects([(0, 7, "bad thing")])
    w.close()
    ref = concat(blocks)
    with h5py.File(tmp_path / "a.h5") as h5:
        for name in ("atoms/forces", "configs/energy", "molecules/molecular_forces"):
            assert h5[name].chunks is None and h5[name].compression is None
        assert h5["atoms/forces"].attrs["unit"] == "eV/Å" and h5["atoms/forces"].attrs["level"] == "atom"
    cols, prov = read_columns(tmp_path / "a.h5")
    assert prov["inputs"][0]["path"] == "x"
    np.testing.assert_array_equal(cols.atoms["forces"], ref.atoms["forces"])
    np.testing.assert_array_equal(cols.configs["config_type"], ref.configs["config_type"])
    with ScfdataFile(tmp_path / "a.h5") as f:
        assert _memory_mapped(f.raw("atoms", "forces"))
        assert f.rejects() == [(0, 7, "bad thing")]
        assert f.coverage("energy") == int(ref.masks["energy"].sum())
        assert not list(tmp_path.glob(".*"))  # no scratch or temporary file left


def test_read_batch_equals_per_config_reads(tmp_path):
    b = block(40, 1)
    b.atoms["molecule"] = np.concatenate([np.arange(n) % max(m, 1) for n, m in zip(b.n_atoms, b.n_molecules)])
    write_columns(tmp_path / "b.h5", b)
    idx = [31, 2, 2, 17, 0]
    with ScfdataFile(tmp_path / "b.h5") as f:
        batch = f.read_batch(idx)
        parts = [f.read_config(i) for i in idx]
    np.testing.assert_array_equal(batch["forces"], np.concatenate([p["forces"] for p in parts]))
    np.testing.assert_array_equal(batch["energy"], [p["energy"] for p in parts])
    np.testing.assert_array_equal(batch["dipole_mask"], [p["dipole_mask"] for p in parts])
    np.testing.assert_array_equal(batch["ptr"], np.r_[0, np.cumsum([p["n_atoms"] for p in parts])])
    np.testing.assert_array_equal(batch["batch"], np.repeat(np.arange(5), [p["n_atoms"] for p in parts]))
    mol_off = np.r_[0, np.cumsum([p["n_molecules"] for p in parts])][:-1]
    np.testing.assert_array_equal(batch["molecule"],
                                  np.concatenate([p["molecule"] + o for p, o in zip(parts, mol_off)]))
    np.testing.assert_array_equal(batch["molecular_forces"], np.concatenate([p["molecular_forces"] for p in parts]))


def test_assemble_unions_fragments_and_selects_rows(tmp_path):
    base = [block(9, s) for s in range(3)]
    shards = []
    for k, b in enumerate(base):
        p = tmp_path / f"base{k}.h5"
        frag = Columns(n_atoms=b.n_atoms, atoms={"esps": np.arange(b.n_atoms.sum(), dtype=float) + 100 * k},
                       masks={"esps": np.ones(b.n_configs, bool)})
        write_columns(p, b)
        write_columns(tmp_path / f"esps{k}.h5", frag, derived_by={"esps": {"max_l": 1}})
        shards.append([p, tmp_path / f"esps{k}.h5"])
    rows = [np.array([0, 4]), np.array([], dtype=int), np.array([8, 1])]
    assemble(tmp_path / "out.h5", shards, rows, provenance={"k": 1}, rejects=[(0, 3, "r")])
    with ScfdataFile(tmp_path / "out.h5") as f:
        assert f.n_configs == 4
        assert f.field_attrs("esps")["derived_by"] == {"max_l": 1}
        got = f.read_batch(range(4))
    expect = concat([base[0].select([0, 4]), base[2].select([8, 1])])
    np.testing.assert_array_equal(got["forces"], expect.atoms["forces"])
    np.testing.assert_array_equal(got["molecular_forces"], expect.molecules["molecular_forces"])
    assert got["esps"][: base[0].n_atoms[0]].tolist() == list(range(base[0].n_atoms[0]))


def test_reader_refuses_other_versions_and_truncated_files(tmp_path):
    p = tmp_path / "a.h5"
    write_columns(p, block(5))
    with h5py.File(p, "a") as h5:
        h5.attrs["format_version"] = 7
    with pytest.raises(FormatError, match="format_version=7.*reads format_version 1"):
        ScfdataFile(p)
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = 1
    with pytest.raises(FormatError, match="not an scfdata file"):
        ScfdataFile(tmp_path / "other.h5")
    write_columns(p, block(50))
    data = p.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="truncated"):
        with ScfdataFile(tmp_path / "cut.h5") as f:
            f.read_batch(range(50))


def test_empty_file(tmp_path):
    w = StreamWriter(tmp_path / "e.h5")
    w.close()
    with ScfdataFile(tmp_path / "e.h5") as f:
        assert f.n_configs == 0 and f.field_names() == []


def test_killed_writer_leaves_no_file_that_looks_complete(tmp_path):
    """A process killed mid-write leaves only a scratch file: the final name never exists half-written."""
    import subprocess
    import sys

    code = f"""
import os, numpy as np
from scfdata.h5io import StreamWriter
from scfdata.columns import Columns
w = StreamWriter({str(tmp_path / "out.h5")!r})
w.append(Columns(n_atoms=np.array([2, 1]), atoms={{"forces": np.zeros((3, 3))}},
                 masks={{"forces": np.ones(2, bool)}}))
os._exit(9)   # killed before close()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert not (tmp_path / "out.h5").exists()
    with pytest.raises(FormatError, match="no such file"):
        ScfdataFile(tmp_path / "out.h5")


def _mp_shard(n_atoms, width, present, seed):
    """A shard with atomic_multipoles of ``width`` columns; configs with present=False hold zeros."""
    rng = np.random.default_rng(seed)
    n_atoms, present = np.asarray(n_atoms), np.asarray(present, bool)
    mp = rng.normal(size=(int(n_atoms.sum()), width)) * np.repeat(present, n_atoms)[:, None]
    return Columns(n_atoms=n_atoms, configs={"energy": rng.normal(size=len(n_atoms))},
                   atoms={"numbers": rng.integers(1, 9, int(n_atoms.sum())), "atomic_multipoles": mp},
                   masks={"energy": np.ones(len(n_atoms), bool), "atomic_multipoles": present})


def test_assemble_pads_fully_masked_narrower_multipoles(tmp_path):
    """A shard without any multipoles stores (n, 1) zeros: it is zero-padded to the other shards' width."""
    shards = [_mp_shard([2, 3], 4, [True, True], 0), _mp_shard([1, 2, 2], 1, [False] * 3, 1),
              _mp_shard([3], 4, [False], 2)]
    paths = []
    for k, b in enumerate(shards):
        write_columns(tmp_path / f"s{k}.h5", b)
        paths.append([tmp_path / f"s{k}.h5"])
    assemble(tmp_path / "out.h5", paths)
    with ScfdataFile(tmp_path / "out.h5") as f:
        mp, mask = f.read("atomic_multipoles"), f.mask("atomic_multipoles")
        assert mp.shape == (13, 4)
        np.testing.assert_array_equal(mp[:5], shards[0].atoms["atomic_multipoles"])
        np.testing.assert_array_equal(mp[5:], 0.0)
        assert mask.tolist() == [True, True, False, False, False, False]
        np.testing.assert_array_equal(f.read("energy"), np.concatenate([b.configs["energy"] for b in shards]))
    # only the selected rows count: shard 1's data rows are left out, so it may be padded
    b1 = _mp_shard([1, 2], 1, [True, False], 3)
    write_columns(tmp_path / "d1.h5", b1)
    assemble(tmp_path / "sel.h5", [paths[0], [tmp_path / "d1.h5"]], [None, np.array([1])])
    with ScfdataFile(tmp_path / "sel.h5") as f:
        assert f.read("atomic_multipoles").shape == (7, 4)


def test_assemble_refuses_narrower_shape_that_holds_data(tmp_path):
    write_columns(tmp_path / "a.h5", _mp_shard([2, 3], 4, [True, True], 0))
    write_columns(tmp_path / "b.h5", _mp_shard([2], 1, [True], 1))  # real monopoles, not a placeholder
    with pytest.raises(FormatError, match=r"atoms/atomic_multipoles: per-item shape differs.*\(4,\) in shard 0"
                                          r".*\(1,\) in shard 1.*shard\(s\) 1 hold data"):
        assemble(tmp_path / "out.h5", [[tmp_path / "a.h5"], [tmp_path / "b.h5"]])
    with pytest.raises(FormatError, match=r"\(1,\) in shard 0, \(4,\) in shard 1.*shard\(s\) 0 hold data"):
        assemble(tmp_path / "out.h5", [[tmp_path / "b.h5"], [tmp_path / "a.h5"]])
    assert not (tmp_path / "out.h5").exists()


def test_assemble_of_real_ingest_with_multipoles_in_some_frames(tmp_path):
    """4 frames, multipoles in the first 2, ingested as 2 shards of 2 frames: assemble must succeed."""
    import ase.io
    from ase import Atoms

    from scfdata.ingest import ingest
    from scfdata.keys import KeyMapping

    frames = []
    for k in range(4):
        a = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        a.info["E"] = -1.0 - k
        if k < 2:
            a.arrays["M"] = np.c_[np.array([-0.8, 0.4, 0.4]), np.full((3, 3), 0.01 * (k + 1))]
        frames.append(a)
    ase.io.write(tmp_path / "in.extxyz", frames, format="extxyz")
    mapping = KeyMapping.from_dict({"info_keys": {"energy": "E"}, "arrays_keys": {"atomic_multipoles": "M"}})
    shards = []
    for k, (start, stop) in enumerate([(0, 2), (2, 4)]):
        w = StreamWriter(tmp_path / f"shard{k}.h5")
        ingest(w, [(0, tmp_path / "in.extxyz", start, stop)], mapping, on_error="raise")
        shards.append([w.close()])
    assemble(tmp_path / "out.h5", shards)
    with ScfdataFile(tmp_path / "out.h5") as f:
        mp = f.read("atomic_multipoles")
        assert mp.shape == (12, 4)
        np.testing.assert_allclose(mp[:6], np.concatenate([fr.arrays["M"] for fr in frames[:2]]))
        np.testing.assert_array_equal(mp[6:], 0.0)
        assert f.mask("atomic_multipoles").tolist() == [True, True, False, False]
        np.testing.assert_array_equal(f.read("energy"), [-1.0, -2.0, -3.0, -4.0])


def test_reader_on_a_directory_or_missing_path_says_so(tmp_path):
    with pytest.raises(FormatError, match=r"is a directory, not an scfdata file.*holds no \.h5 file") as e:
        ScfdataFile(tmp_path)
    assert "truncated" not in str(e.value)
    write_columns(tmp_path / "train.h5", block(3))
    with pytest.raises(FormatError, match=r"is a directory.*files in it: train\.h5"):
        ScfdataFile(tmp_path)
    with pytest.raises(FormatError, match="no such file") as e:
        ScfdataFile(tmp_path / "valid.h5")
    assert "truncated" not in str(e.value)


# -- a reader bound to the file it opened; checksums; masks through assemble; temporaries ------------
def test_reader_keeps_reading_the_file_it_opened_after_another_is_renamed_over_its_path(tmp_path):
    """assemble renames a new file over the path; an open reader must not return the new file's bytes,
    neither for arrays it mapped before nor for arrays it maps afterwards."""
    import os

    path = tmp_path / "train.h5"
    old, new = block(30, seed=1), block(30, seed=1, offset=1000.0)  # same layout, other values
    write_columns(path, old)
    with ScfdataFile(path) as f:
        forces = f.raw("atoms", "forces")  # mapped before the rename
        write_columns(tmp_path / "new.h5", new)
        os.replace(tmp_path / "new.h5", path)
        energy = np.asarray(f.raw("configs", "energy"))  # first mapped after the rename
        batch = f.read_batch([0, 29])
        np.testing.assert_array_equal(energy, old.configs["energy"])
        np.testing.assert_array_equal(np.asarray(forces), old.atoms["forces"])
        np.testing.assert_array_equal(batch["energy"], old.configs["energy"][[0, 29]])
    with ScfdataFile(path) as f:  # a new reader reads the new file
        np.testing.assert_array_equal(np.asarray(f.raw("configs", "energy")), new.configs["energy"])


def test_every_array_carries_the_crc32_of_its_stored_bytes(tmp_path):
    import zlib

    cols = block(40, seed=2)
    write_columns(tmp_path / "a.h5", cols, rejects=[(0, 3, "bad")])
    w = StreamWriter(tmp_path / "s.h5")
    w.append(cols)
    w.close()
    assemble(tmp_path / "m.h5", [[tmp_path / "a.h5"], [tmp_path / "s.h5"]], [np.arange(0, 40, 2), None])
    for name in ("a.h5", "s.h5", "m.h5"):
        with h5py.File(tmp_path / name) as h5:
            keys = [f"{g}/{n}" for g in ("configs", "atoms", "molecules", "masks", "rejects") for n in h5[g]]
            assert len(keys) > 10
            for key in keys:
                data = np.ascontiguousarray(h5[key][()])
                assert h5[key].attrs["checksum"] == f"crc32:{zlib.crc32(data.tobytes()):08x}", (name, key)


def test_assemble_keeps_a_target_absent_when_any_file_of_the_shard_masks_it(tmp_path):
    """base.h5 masks `molecule` for a config that lacks the key; a fragment that re-derives the target
    (source: key) stores a placeholder 0 with its mask True: the final file keeps the mask False."""
    n = 4
    n_at = np.array([2, 3, 1, 2])
    base = Columns(n_atoms=n_at, configs={"energy": np.arange(n, dtype=float)},
                   atoms={"numbers": np.ones(8, np.int64), "positions": np.zeros((8, 3))},
                   masks={"molecule": np.array([True, False, True, True]), "energy": np.ones(n, bool)})
    base.atoms["molecule"] = np.array([0, 1, 0, 0, 0, 0, 0, 1])
    frag = Columns(n_atoms=n_at, atoms={"molecule": np.array([0, 1, 0, 0, 0, 0, 0, 1])},
                   masks={"molecule": np.ones(n, bool)})
    write_columns(tmp_path / "base.h5", base)
    write_columns(tmp_path / "molecules.h5", frag)
    assemble(tmp_path / "out.h5", [[tmp_path / "base.h5", tmp_path / "molecules.h5"]])
    with ScfdataFile(tmp_path / "out.h5") as f:
        np.testing.assert_array_equal(f.mask("molecule"), [True, False, True, True])
        np.testing.assert_array_equal(f.mask("energy"), [True] * 4)


def test_writers_remove_temporaries_of_dead_writers_only(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".a.h5.{dead}.tmp", tmp_path / f".a.h5.{dead}.scratch"]
    live = tmp_path / f".a.h5.{os.getppid()}.tmp"
    other = tmp_path / f".b.h5.{dead}.tmp"  # another file's: not this writer's business
    for q in (*stale, live, other):
        q.write_bytes(b"x")
    write_columns(tmp_path / "a.h5", block(3))
    assert not any(q.exists() for q in stale) and live.exists() and other.exists()


def test_a_write_the_file_size_limit_cannot_hold_is_refused_before_hdf5_starts(tmp_path):
    import subprocess
    import sys

    code = ("import resource, numpy as np; resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000));"
            "from scfdata.columns import Columns; from scfdata.h5io import write_columns;"
            "write_columns(r'%s', Columns(n_atoms=np.ones(50_000, int), configs={'energy': np.zeros(50_000)},"
            "atoms={'positions': np.zeros((50_000, 3))}))" % (tmp_path / "big.h5"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "OSError: [Errno 27] File too large: about" in proc.stderr, proc.stderr[-500:]
    assert "the file size limit (ulimit -f) is 200000 bytes" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _stored(path) -> dict:
    """Every object of an HDF5 file: name -> (dtype, shape, layout, bytes, attrs) for datasets, attrs for groups
    (the root's creation time left out)."""
    out = {}
    with h5py.File(path) as h5:
        def visit(name, obj):
            attrs = {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype, obj.shape, obj.chunks, obj.compression, obj[()].tobytes(), attrs)
            else:
                out[name] = attrs
        h5.visititems(visit)
        out["/"] = {k: v for k, v in h5.attrs.items() if k != "created"}
    return out


def test_stream_writer_stores_exactly_what_one_write_of_the_whole_set_stores(tmp_path):
    """Blocks streamed to the raw scratch file (strings of different widths per block, a block of no config,
    a later block in another integer dtype) give the same bytes, dtypes, layout and attributes as
    write_columns of the concatenation."""
    blocks = [block(7, 1), block(0, 2), block(11, 3), block(5, 4)]
    blocks[2].configs["config_type"] = np.array(["a-much-longer-type-ü" if k % 4 else "" for k in range(11)])
    blocks[3].atoms["numbers"] = blocks[3].atoms["numbers"].astype(np.int32)
    w = StreamWriter(tmp_path / "s.h5", provenance={"p": 1})
    for b in blocks:
        w.append(b)
    w.add_rejects([(0, 3, "bad é"), (1, 9, "worse")])
    w.close()
    ref = concat([blocks[0], blocks[1], blocks[2], blocks[3]])
    ref.atoms["numbers"] = ref.atoms["numbers"].astype(blocks[0].atoms["numbers"].dtype)
    write_columns(tmp_path / "c.h5", ref, provenance={"p": 1}, rejects=[(0, 3, "bad é"), (1, 9, "worse")])
    streamed, whole = _stored(tmp_path / "s.h5"), _stored(tmp_path / "c.h5")
    assert list(streamed) == list(whole)
    for name in whole:
        assert streamed[name] == whole[name], name
    assert streamed["configs/config_type"][0] == np.dtype("S21")
    assert not list(tmp_path.glob(".*"))


def test_stream_writer_refuses_a_block_whose_text_field_turns_numeric(tmp_path):
    w = StreamWriter(tmp_path / "t.h5")
    w.append(block(3))
    b = block(2)
    b.configs["config_type"] = np.arange(2.0)
    with pytest.raises(ValueError, match="configs/config_type: dtype float64 differs from earlier blocks' "):
        w.append(b)
    w.abort()
    assert list(tmp_path.iterdir()) == []



def _assert_same_file(a, b):
    x, y = _stored(a), _stored(b)
    assert list(x) == list(y)
    for name in x:
        assert x[name] == y[name], name

def test_assemble_many_writes_what_one_assemble_per_output_writes(tmp_path):
    """One pass over the shards for several outputs (the splits) gives each output exactly the file a
    separate `assemble` gives it: same arrays, masks, padding, checksums, attributes, rejects."""
    shards = []
    for k, b in enumerate([_mp_shard([2, 3, 1], 4, [True, False, True], 0), _mp_shard([1, 2], 1, [False] * 2, 1),
                           _mp_shard([3, 1, 2, 2], 4, [True] * 4, 2)]):
        write_columns(tmp_path / f"s{k}.h5", b)
        esps = Columns(n_atoms=b.n_atoms, atoms={"esps": np.arange(b.n_atoms.sum(), dtype=float) + 10 * k},
                       masks={"esps": np.arange(b.n_configs) % 2 == 0})
        write_columns(tmp_path / f"e{k}.h5", esps, derived_by={"esps": {"max_l": 1}})
        shards.append([tmp_path / f"s{k}.h5", tmp_path / f"e{k}.h5"])
    labels = [np.array([0, 1, 2]), np.array([1, 1]), np.array([2, 0, 0, 1])]  # output i takes label i
    rejects = [(0, 7, "a reason"), (1, 2, "another")]
    outputs = []
    for i in range(3):
        parts = [(k, np.flatnonzero(lab == i)) for k, lab in enumerate(labels) if (lab == i).any()]
        outputs.append(AssemblyOutput(tmp_path / f"many{i}.h5", parts, {"split": i}, {"split_name": f"n{i}"}))
        assemble(tmp_path / f"one{i}.h5", [shards[k] for k, _ in parts], [r for _, r in parts],
                 provenance={"split": i}, rejects=rejects, root_attrs={"split_name": f"n{i}"})
    assert assemble_many(outputs, shards, rejects=rejects) == [o.path for o in outputs]
    for i in range(3):
        _assert_same_file(tmp_path / f"one{i}.h5", tmp_path / f"many{i}.h5")
    with ScfdataFile(tmp_path / "many1.h5") as f:  # shard 1 (narrow, fully masked) padded to shard 0's width
        assert f.n_configs == 4 and f.read("atomic_multipoles").shape == (3 + 1 + 2 + 2, 4)
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_assemble_many_failure_leaves_no_output(tmp_path):
    """A shard that cannot go into one output (narrower shape holding data) stops the whole call before
    any file is published, and no temporary stays behind."""
    write_columns(tmp_path / "a.h5", _mp_shard([2, 3], 4, [True, True], 0))
    write_columns(tmp_path / "b.h5", _mp_shard([2], 1, [True], 1))
    outputs = [AssemblyOutput(tmp_path / "x.h5", [(0, None)]),
               AssemblyOutput(tmp_path / "y.h5", [(0, None), (1, None)])]
    with pytest.raises(FormatError, match="per-item shape differs"):
        assemble_many(outputs, [[tmp_path / "a.h5"], [tmp_path / "b.h5"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5"]


def test_assemble_many_refuses_parts_out_of_shard_order(tmp_path):
    write_columns(tmp_path / "a.h5", block(3, 0))
    shards = [[tmp_path / "a.h5"], [tmp_path / "a.h5"]]
    for parts in ([(1, None), (0, None)], [(0, None), (0, None)], [(2, None)]):
        with pytest.raises(ValueError, match=r"parts must name shards 0\.\.1 in increasing order"):
            assemble_many([AssemblyOutput(tmp_path / "x.h5", parts)], shards)
    assert not (tmp_path / "x.h5").exists()


def test_assemble_many_needs_room_for_all_outputs_together(tmp_path, monkeypatch):
    """The outputs are written at the same time: free space for the largest alone is not enough (HDF5 may
    crash instead of failing cleanly when a write fails half way), and nothing is written."""
    import collections
    import shutil

    import scfdata.h5io as h5io

    write_columns(tmp_path / "a.h5", block(40, 0))
    outputs = [AssemblyOutput(tmp_path / f"x{i}.h5", [(0, np.arange(i, 40, 2))]) for i in range(2)]
    need = [h5io._data_bytes(h5io._output_layout([h5io._Shard([tmp_path / "a.h5"], o.parts[0][1])]), [])
            for o in outputs]
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, max(need) + 1))
    with pytest.raises(OSError, match=rf"No space left on device: about {sum(need)} bytes to write"):
        assemble_many(outputs, [[tmp_path / "a.h5"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, sum(need)))
    assemble_many(outputs, [[tmp_path / "a.h5"]])


def test_assemble_many_names_the_real_shard_in_a_shape_error(tmp_path):
    """An output that skips shards (a split without configs there) names the shard by its index in the
    assembly, not by its position among the output's parts."""
    write_columns(tmp_path / "a.h5", _mp_shard([2, 3], 4, [True, True], 0))
    write_columns(tmp_path / "b.h5", _mp_shard([2], 1, [True], 1))
    shards = [[tmp_path / "a.h5"], [tmp_path / "a.h5"], [tmp_path / "b.h5"]]
    with pytest.raises(FormatError, match=r"\(4,\) in shard 1, \(1,\) in shard 2.*shard\(s\) 2 hold data"):
        assemble_many([AssemblyOutput(tmp_path / "x.h5", [(1, None), (2, None)])], shards)

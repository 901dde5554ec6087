"""`scfdata assemble` starts without ase.io and scipy: it takes check_keys_found (and IngestError) from the
light scfdata.ingest_errors, not from scfdata.ingest (whose frame readers it does not use)."""

from __future__ import annotations

from test_startup import _run


def test_assemble_start_up_imports_neither_ase_io_nor_scipy_nor_ingest():
    code, lines, imported = _run(["assemble", "--help"])
    assert code == 0 and any("assemble" in line for line in lines)
    assert "scfdata.commands.assemble" in imported and "scfdata.ingest_errors" in imported
    heavy = {"ase.io", "scipy", "scfdata.ingest"} & imported
    assert not heavy, sorted(heavy)


def test_the_old_import_path_still_works():
    from scfdata import ingest, ingest_errors

    assert ingest.check_keys_found is ingest_errors.check_keys_found
    assert ingest.IngestError is ingest_errors.IngestError and issubclass(ingest.IngestError, ValueError)

"""Mutation audit: apply single-line mutations of the code one at a time to a copy of the repository, run the
tests that should catch each, and print which are caught.

Run from the repository: all 37 mutations with baselines in 10 min on 2 otherwise idle cores (measured);
on busy cores (load ~12) each mutation of a module of scfdata/reference, which recompiles the numba kernels
its tests use, took 1.5-6 min::

    python scripts/mutation_check.py                 # every mutation, table at the end
    python scripts/mutation_check.py --list          # the mutations and their test selections, nothing run
    python scripts/mutation_check.py --only S1,C1    # some of them (ids or classes: --only masks,V1)
    python scripts/mutation_check.py --no-baseline   # skip the unmutated run of each selection (suite green)
    python scripts/mutation_check.py --keep          # keep the copy (printed) for a closer look

The copy (git's tracked and untracked-but-not-ignored files, or the whole tree without results/ and caches when
there is no git) is made once in a temporary directory; the working tree is never written. Each mutation must
match its file exactly once (else it is reported as ``stale``, so a refactor cannot silently retire it);
it is applied, its test selection runs with ``PYTHONPATH`` set to the copy (pytest ``-x``, snakemake jobs
included), and the file is restored. Numba kernels are cached in the copy under a key of the sources'
content (:mod:`scfdata.reference.numba_cache`), so a mutated kernel is compiled, never taken from the cache
of the baseline run: S1 is the stale-cache experiment of issue 19.

Verdicts: ``caught`` (a test failed), ``SURVIVED`` (the selection passed), ``error`` (pytest could not
run the selection: exit code 2-5), ``timeout``, ``stale`` (old text not found once), ``baseline-fails``
(the unmutated selection already fails, so the verdict would mean nothing). Exit code: 0 when every
mutation is caught, 1 otherwise.

To add a mutation: one ``M(id, class, file, old, new, tests, what)`` line below; ``old`` must be unique in
``file``; ``tests`` is a pytest selection (paths, ``::`` node ids, ``-k`` expressions) fast enough to rerun.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class M:
    id: str
    cls: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


ESP_RS = ("tests/reference/test_esp_realspace.py",)
EWALD_NB = ("tests/reference/test_ewald_numba.py",)
SLAB = ("tests/reference/test_slab.py",)
VALIDATE = ("tests/test_validate.py", "tests/test_ingest.py")
KERNELS = "scfdata/reference/multipole_kernels_numba.py"

MUTATIONS = [
    # -- signs
    M("S1", "signs", KERNELS, "        v -= pr * g1\n", "        v += pr * g1\n", ESP_RS,
      "dipole potential sign in the inlined pair kernel (issue 19: survived with a stale numba cache)"),
    M("S2", "signs", KERNELS, "        c = -q[j] * g1\n", "        c = q[j] * g1\n", ESP_RS,
      "field of a charge, sign"),
    M("S3", "signs", KERNELS, "        v += rtr * g2 / 3.0\n", "        v -= rtr * g2 / 3.0\n", ESP_RS,
      "quadrupole potential sign"),
    M("S4", "signs", "scfdata/reference/ewald_numba.py", "amp_im = -(p[j, pc[0]] * kx", "amp_im = (p[j, pc[0]] * kx",
      EWALD_NB, "reciprocal-space dipole amplitude sign (compiled Ewald)"),
    M("S5", "signs", "scfdata/reference/slab.py", "K_E * (4 * math.pi / vol[cfg] * m_z[cfg] * zr",
      "K_E * (-4 * math.pi / vol[cfg] * m_z[cfg] * zr", SLAB, "slab dipole (Yeh-Berkowitz) correction sign"),
    # -- factors
    M("F1", "factors", "scfdata/reference/ewald_numba.py", "wk = 8.0 * math.pi / volume[c]",
      "wk = 4.0 * math.pi / volume[c]", EWALD_NB, "Ewald reciprocal prefactor 8π/V -> 4π/V"),
    M("F2", "factors", KERNELS, "b1 = (b0 + 2.0 * a2 * expo) * ir2", "b1 = (b0 + a2 * expo) * ir2",
      EWALD_NB + ESP_RS, "erfc radial kernel, first derivative factor"),
    M("F3", "factors", "scfdata/reference/slab.py", "ez = K_E * 4 * math.pi / vol[cfg]",
      "ez = K_E * 2 * math.pi / vol[cfg]", SLAB, "slab field correction 4π -> 2π"),
    M("F4", "factors", "scfdata/reference/multipole_kernels.py", "    esps *= K_E\n",
      "    esps *= K_E * (1 + 1e-9)\n", ESP_RS, "Coulomb constant off by 1e-9 relative"),
    # -- self terms
    M("T1", "self terms", "scfdata/reference/multipole_kernels.py", "        esps += v\n", "        esps += 0 * v\n",
      ("tests/reference/test_esp.py", *EWALD_NB), "Gaussian self term (self_interaction: include) dropped"),
    M("T2", "self terms", "scfdata/reference/ewald_numba.py", "v -= q * g_erf_at_zero(g_atom, 0)",
      "v -= 0.5 * q * g_erf_at_zero(g_atom, 0)", EWALD_NB, "Ewald self pair's long-range part halved"),
    M("T3", "self terms", "scfdata/reference/ewald_numba.py", "e -= p * g_erf_at_zero(g_atom, 1)[:, None]",
      "e += p * g_erf_at_zero(g_atom, 1)[:, None]", EWALD_NB, "Ewald self field of a dipole, sign"),
    # -- backgrounds
    M("B1", "backgrounds", "scfdata/reference/ewald_numba.py",
      "v -= (math.pi * total / volume * (1.0 / gamma**2 - inv_b2))[cfg]",
      "v -= (math.pi * total / volume * (1.0 / gamma**2))[cfg]", EWALD_NB,
      "neutralising background without the Gaussian term (compiled Ewald)"),
    M("B2", "backgrounds", "scfdata/reference/ewald.py", "esps -= math.pi * total / vol * (1.0 / gamma**2",
      "esps -= 2 * math.pi * total / vol * (1.0 / gamma**2", ("tests/reference/test_ewald.py",),
      "neutralising background doubled (numpy Ewald)"),
    M("B3", "backgrounds", "scfdata/reference/slab.py", "- (math.pi * length * total / (3 * area))[cfg])",
      "- (math.pi * length * total / (6 * area))[cfg])", SLAB, "charged-slab constant halved"),
    # -- masks
    M("M1", "masks", "scfdata/ingest.py", "else dipole_mask_from_pbc(pbc)[0]", "else np.ones(3)",
      ("tests/test_dipole_mask.py", "tests/test_ingest.py"),
      "issue 19 #3: default dipole mask of periodic configs all ones (periodic DFT dipoles become targets)"),
    M("M1w", "masks", "scfdata/ingest.py", "else dipole_mask_from_pbc(pbc)[0]", "else np.ones(3)",
      ("tests/test_dipole_mask.py::test_workflow_final_file_masks_dft_and_derived_dipoles_by_boundary",),
      "M1, caught by the snakemake run alone (final file)"),
    M("M2", "masks", "scfdata/reference/dipoles.py", "return (~p).astype(float)", "return p.astype(float)",
      ("tests/reference/test_dipoles.py", "tests/test_dipole_mask.py", "-k", "not workflow"),
      "dipole mask from pbc inverted"),
    M("M3", "masks", "scfdata/ingest.py", "masks[name] = present_b & live", "masks[name] = present_b",
      ("tests/test_ingest.py",), "a zero property or config weight no longer masks the target"),
    M("M4", "masks", "scfdata/losses/terms.py", "count = torch.count_nonzero(present.expand(e.shape))",
      "count = torch.tensor(e.numel())", ("tests/losses",), "loss mean counts absent entries"),
    M("M5", "masks", "scfdata/reference/molecular.py", "periodic = pb.any(axis=1) if target",
      "periodic = pb.all(axis=1) if target", ("tests/reference/test_molecular.py", "tests/test_derive_molecular.py",
                                               "-k", "not workflow"), "cluster virial of slabs not masked"),
    # -- seeds
    M("R1", "seeds", "scfdata/split.py", "rng = np.random.default_rng(seed)", "rng = np.random.default_rng(0)",
      ("tests/test_split.py",), "split ignores its seed"),
    # -- indices
    M("I1", "indices", "scfdata/reference/esp.py", "dipole_columns=(3, 1, 2), **opts)",
      "dipole_columns=(1, 2, 3), **opts)", ("tests/reference/test_esp.py",),
      "MACE_SCF dipole columns [d_y, d_z, d_x] read as x, y, z in the ESP"),
    M("I2", "indices", "scfdata/reference/dipoles.py", "mu += _segment_sum(m[:, [3, 1, 2]], ptr)",
      "mu += _segment_sum(m[:, [1, 2, 3]], ptr)", ("tests/reference/test_dipoles.py",),
      "dipole from multipoles, column order"),
    M("I3", "indices", "scfdata/reference/direct_sum_numba.py", "for j in range(i + 1, ends[k]):",
      "for j in range(i + 2, ends[k]):", ESP_RS, "direct sum skips each atom's next neighbour"),
    # -- validation thresholds (issue 19 #2)
    M("V1", "validation", "scfdata/validate.py", "charge_tolerance: float = 1e-3", "charge_tolerance: float = 1e-2",
      VALIDATE, "issue 19 #2: charge-sum tolerance loosened tenfold"),
    M("V2", "validation", "scfdata/validate.py", "if abs(s - total_charge) <= opts.charge_tolerance:",
      "if s - total_charge <= opts.charge_tolerance:", VALIDATE, "charge-sum check without abs"),
    M("V3", "validation", "scfdata/validate.py", "if d_min < opts.min_distance:", "if d_min < 0.5 * opts.min_distance:",
      VALIDATE, "minimum distance halved"),
    M("V4", "validation", "scfdata/validate.py", "det / max(n, 1) > opts.max_volume_per_atom:",
      "det / max(n, 1) > 2 * opts.max_volume_per_atom:", VALIDATE, "volume-per-atom limit doubled"),
    M("V5", "validation", "scfdata/validate.py", "if abs(det) < 1e-8:", "if abs(det) < 1e-10:", VALIDATE,
      "singular-cell threshold 1e-8 -> 1e-10 Å^3"),
    M("V6", "validation", "scfdata/validate.py", "return charges + (total_charge - s) / len(charges)",
      "return charges + (total_charge - s)", VALIDATE, "renormalised charges shifted by the whole excess"),
    M("V7", "validation", "scfdata/validate.py", 'primitive_neighbor_list("ijd", pbc, cell, positions, cutoff,',
      'primitive_neighbor_list("ijd", pbc, cell, positions, 0.5 * cutoff,', VALIDATE,
      "neighbour-list cut-off of the distance check (periodic and large configs) halved"),
    # -- molecule centres (issue 19 #1)
    M("C1", "centres", "scfdata/derive_molecular.py", "molecule_centres(a.unwrapped_positions, glob",
      'molecule_centres(cols.atoms["positions"], glob', ("tests/test_derive_molecular.py", "tests/test_derive.py",
                                                          "-k", "molecul"),
      "issue 19 #1: molecule centres from wrapped positions"),
    M("C1w", "centres", "scfdata/derive_molecular.py", "molecule_centres(a.unwrapped_positions, glob",
      'molecule_centres(cols.atoms["positions"], glob',
      ("tests/test_derive_molecular.py::test_workflow_final_file_has_whole_molecule_centres",),
      "C1, caught by the snakemake run alone (final file)"),
    M("C2", "centres", "scfdata/derive_molecular.py", 'masses=masses, centre=s["centre"])',
      'masses=masses, centre="geometric")', ("tests/test_derive_molecular.py", "-k", "not workflow"),
      "centre: mass ignored"),
    # -- the numba cache (issue 19 #4)
    M("N1", "numba cache", "scfdata/reference/numba_cache.py", "        with _numba_cache_dir(CACHE_DIR):\n",
      "        with contextlib.nullcontext():\n", ("tests/reference/test_numba_cache.py",),
      "issue 19 #4: kernels cached by numba's per-file key again (stale inlined kernels)"),
    M("N2", "numba cache", "scfdata/reference/numba_cache.py", 'sorted(Path(directory).glob("*.py"))',
      'sorted(Path(directory).glob("*_numba.py"))', ("tests/reference/test_numba_cache.py",),
      "cache key without the modules whose constants the kernels compile in (MIN_SEPARATION)"),
]


def copy_repo(dest: Path) -> Path:
    """The repository's files (tracked and untracked-not-ignored) copied into dest/repo."""
    out = dest / "repo"
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, out, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", ".snakemake"))
        return out
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / name)
    return out


def run_tests(repo: Path, selection: tuple[str, ...], timeout: float) -> tuple[str, str, float]:
    """(verdict, detail, seconds) of one pytest run of ``selection`` in the copy."""
    env = {**os.environ, "PYTHONPATH": str(repo), "NUMBA_CACHE_DIR": str(repo.parent / "numba-cache")}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *selection]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"> {timeout:.0f} s", time.monotonic() - t0
    dt = time.monotonic() - t0
    failed = [ln.split(" - ")[0].removeprefix("FAILED ") for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
    if proc.returncode == 0:
        return "pass", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "", dt
    if proc.returncode == 1:
        return "fail", failed[0] if failed else "failed", dt
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    return "error", f"pytest exit {proc.returncode}: {tail[-1] if tail else ''}", dt


def check_mutation(repo: Path, m: M) -> str | None:
    """None if ``m.old`` occurs exactly once in its file of the copy, else why not."""
    path = repo / m.file
    if not path.is_file():
        return f"{m.file} not found"
    n = path.read_text().count(m.old)
    return None if n == 1 else f"old text found {n} times in {m.file}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated mutation ids or classes")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of each test selection")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default 900)")
    args = ap.parse_args(argv)

    chosen = MUTATIONS
    if args.only:
        keys = {k.strip() for k in args.only.split(",")}
        chosen = [m for m in MUTATIONS if m.id in keys or m.cls in keys]
        unknown = keys - {m.id for m in chosen} - {m.cls for m in chosen}
        if unknown:
            ap.error(f"unknown mutation ids or classes: {', '.join(sorted(unknown))}")
    if args.list:
        for m in chosen:
            print(f"{m.id:3} {m.cls:12} {m.file}: {m.what}\n    tests: {' '.join(m.tests)}")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="scfdata-mutations-"))
    repo = copy_repo(tmp)
    print(f"copy: {repo}", flush=True)
    rows = []
    try:
        baseline: dict[tuple[str, ...], tuple[str, str]] = {}
        for m in chosen:
            t0 = time.monotonic()
            problem = check_mutation(repo, m)
            if problem:
                rows.append((m, "stale", problem, 0.0))
                print(f"{m.id}: stale ({problem})", flush=True)
                continue
            if not args.no_baseline and m.tests not in baseline:
                verdict, detail, _ = run_tests(repo, m.tests, args.timeout)
                baseline[m.tests] = (verdict, detail)
            if not args.no_baseline and baseline[m.tests][0] != "pass":
                rows.append((m, "baseline-fails", baseline[m.tests][1], time.monotonic() - t0))
                print(f"{m.id}: baseline fails ({baseline[m.tests][1]})", flush=True)
                continue
            path = repo / m.file
            original = path.read_bytes()
            try:
                path.write_text(original.decode().replace(m.old, m.new))
                verdict, detail, dt = run_tests(repo, m.tests, args.timeout)
            finally:
                path.write_bytes(original)
            verdict = {"fail": "caught", "pass": "SURVIVED"}.get(verdict, verdict)
            rows.append((m, verdict, detail, dt))
            print(f"{m.id}: {verdict} in {dt:.0f} s ({detail})", flush=True)
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\n| id | class | mutation | verdict | first failing test / detail | s |\n|---|---|---|---|---|---|")
    for m, verdict, detail, dt in rows:
        print(f"| {m.id} | {m.cls} | {m.what} (`{m.file}`) | {verdict} | {detail} | {dt:.0f} |")
    n_caught = sum(v == "caught" for _, v, _, _ in rows)
    print(f"\n{n_caught} of {len(rows)} mutations caught")
    return 0 if n_caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())

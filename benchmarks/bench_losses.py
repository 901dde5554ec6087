"""Cost of the full loss dict vs `forces` alone, in both conventions, and vs a straightforward version.

Batch: 64 configs, 5,000 atoms, 1,500 molecules; every target present in ~80 % of the configs.
Timed: forward + backward of the loss (the prediction tensors are leaves, so only the loss is timed).
The 15 data losses (MACE_SCF's model-internal terms read model outputs this batch does not carry).

    python benchmarks/bench_losses.py [--device cuda] [--dtype float32] [--repeat 200]

Goals (issue 6): full / forces <= 3; straightforward / full >= 2. The straightforward version is what
MACE_SCF does: each term on its own, per-config counts and weights rebuilt per term, global molecule
indices rebuilt with torch.unique every batch, masked means by boolean indexing. Issue 18: the same
full / forces ratio under ``convention="mace_scf"`` (MACE_SCF's arithmetic).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scfdata.losses import LOSSES, WeightedLoss

B, N, M = 64, 5000, 1500


def make_batch(device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_at = torch.full((B,), N // B)
    n_at[: N - int(n_at.sum())] += 1
    n_mol = torch.full((B,), M // B)
    n_mol[: M - int(n_mol.sum())] += 1
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), n_at.cumsum(0)])
    mptr = torch.cat([torch.zeros(1, dtype=torch.long), n_mol.cumsum(0)])
    batch = torch.repeat_interleave(torch.arange(B), n_at)
    local = torch.cat([torch.arange(int(a)) % int(m) for a, m in zip(n_at, n_mol, strict=True)])
    molecule = local + mptr[:-1][batch]

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    def mask(*shape):
        return torch.rand(*shape, generator=g) < 0.8

    ref = {
        "ptr": ptr, "batch": batch, "weight": torch.ones(B, dtype=dtype),
        "molecule": molecule, "molecule_ptr": mptr, "molecule_batch": torch.repeat_interleave(torch.arange(B), n_mol),
        "local_molecule": local,  # what the straightforward version starts from
        "energy": r(B), "stress": r(B, 3, 3), "total_charge": r(B), "dipole": r(B, 3),
        "polarizability": r(B, 3, 3), "fermi_level": r(B), "cluster_virial": r(B),
        "forces": r(N, 3), "atomic_multipoles": r(N, 9), "esps": r(N),
        "molecular_forces": r(M, 3), "molecule_centre": r(M, 3),
    }
    for f in ("energy", "stress", "total_charge", "polarizability", "fermi_level", "cluster_virial",
              "forces", "atomic_multipoles", "esps", "molecular_forces"):
        ref[f"{f}_mask"] = mask(B)
        ref[f"{f}_weight"] = torch.ones(B, dtype=dtype)
    ref["dipole_mask"] = mask(B, 3)
    ref["dipole_weight"] = torch.ones(B, 3, dtype=dtype)
    pred = {"energy": r(B), "forces": r(N, 3), "stress": r(B, 3, 3), "density_coefficients": r(N, 4),
            "dipole": r(B, 3), "polarizability": r(B, 3, 3), "fermi_level": r(B), "esps": r(N)}
    ref = {k: v.to(device) for k, v in ref.items()}
    pred = {k: v.to(device).requires_grad_(True) for k, v in pred.items()}
    return ref, pred


# ---- the straightforward implementation ----------------------------------------------------------


def _naive_masked_mean(err, w, mask):
    m = mask.expand_as(err) if mask.shape != err.shape else mask
    ww = w.expand_as(err) if w.shape != err.shape else w
    sel = m & (ww != 0)
    if sel.sum() == 0:
        return err.sum() * 0
    return (ww[sel] * err[sel] ** 2).mean()


def _naive_cfg(ref, pred_val, f, per_atom=False, width=1):
    n = torch.bincount(ref["batch"], minlength=B).to(pred_val.dtype)
    w = (ref["weight"].unsqueeze(1) * ref[f"{f}_weight"].reshape(B, -1))
    err = ref[f].reshape(B, width) - pred_val.reshape(B, width)
    if per_atom:
        err = err / n.unsqueeze(1)
    return _naive_masked_mean(err, w, ref[f"{f}_mask"].reshape(B, -1))


def _naive_atom(ref, diff, f):
    w = (ref["weight"] * ref[f"{f}_weight"])[ref["batch"]].unsqueeze(1)
    mask = ref[f"{f}_mask"][ref["batch"]].unsqueeze(1)
    return _naive_masked_mean(diff.reshape(len(ref["batch"]), -1), w, mask)


def _naive_molecular_forces(ref, forces):
    key = ref["batch"] * 100000 + ref["local_molecule"]
    uniq, inv = torch.unique(key, return_inverse=True)
    f_mol = torch.zeros(len(uniq), 3, dtype=forces.dtype, device=forces.device).index_add(0, inv, forces)
    mol_cfg = uniq // 100000
    return f_mol, mol_cfg


def naive_loss(weights, ref, pred):
    out = {}
    q = torch.zeros(B, dtype=pred["forces"].dtype, device=pred["forces"].device).index_add(
        0, ref["batch"], pred["density_coefficients"][:, 0])
    for name in weights:
        if name == "energy_per_atom":
            out[name] = _naive_cfg(ref, pred["energy"], "energy", True)
        elif name == "forces":
            out[name] = _naive_atom(ref, ref["forces"] - pred["forces"], "forces")
        elif name in ("stress", "polarizability"):
            out[name] = _naive_cfg(ref, pred[name], name, False, 9)
        elif name == "atomic_multipoles":
            k = pred["density_coefficients"].shape[1]
            out[name] = _naive_atom(ref, ref[name][:, :k] - pred["density_coefficients"], name)
        elif name.startswith("total_charge"):
            out[name] = _naive_cfg(ref, q, "total_charge", name.endswith("per_atom"))
        elif name.startswith("dipole"):
            out[name] = _naive_cfg(ref, pred["dipole"], "dipole", name.endswith("per_atom"), 3)
        elif name.startswith("fermi_level"):
            out[name] = _naive_cfg(ref, pred["fermi_level"], "fermi_level", name.endswith("per_atom"))
        elif name == "esps":
            out[name] = _naive_atom(ref, ref["esps"] - pred["esps"], "esps")
        elif name == "molecular_forces":
            f_mol, mol_cfg = _naive_molecular_forces(ref, pred["forces"])
            w = (ref["weight"] * ref["molecular_forces_weight"])[mol_cfg].unsqueeze(1)
            mask = ref["molecular_forces_mask"][mol_cfg].unsqueeze(1)
            out[name] = _naive_masked_mean(ref["molecular_forces"] - f_mol, w, mask)
        elif name.startswith("cluster_virial"):
            f_mol, mol_cfg = _naive_molecular_forces(ref, pred["forces"])
            per_mol = (ref["molecule_centre"] * f_mol).sum(1)
            W = torch.zeros(B, dtype=per_mol.dtype, device=per_mol.device).index_add(0, mol_cfg, per_mol)
            out[name] = _naive_cfg(ref, W, "cluster_virial", name.endswith("per_atom"))
    return sum(weights[n] * v for n, v in out.items())


# ---- timing ----------------------------------------------------------------------------------------


def timeit(fn, repeat, device):
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: small kernels, stable timings on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    ref, pred = make_batch(device, dtype)
    all_weights = {n: 1.0 for n, spec in LOSSES.items() if spec.kind == "data"}
    full = WeightedLoss(all_weights)
    forces = WeightedLoss({"forces": 1.0})
    full_parity = WeightedLoss(all_weights, convention="mace_scf")
    forces_parity = WeightedLoss({"forces": 1.0}, convention="mace_scf")

    def run(loss_fn):
        def step():
            for v in pred.values():
                v.grad = None
            loss_fn(ref, pred).backward()
        return step

    # the two implementations agree
    a, b = full(ref, pred).item(), naive_loss(all_weights, ref, pred).item()
    assert abs(a - b) <= 1e-6 * abs(a), (a, b)

    t_forces = timeit(run(forces), args.repeat, device)
    t_full = timeit(run(full), args.repeat, device)
    t_naive = timeit(run(lambda r, p: naive_loss(all_weights, r, p)), args.repeat, device)
    t_forces_parity = timeit(run(forces_parity), args.repeat, device)
    t_full_parity = timeit(run(full_parity), args.repeat, device)
    print(f"batch: {B} configs, {N} atoms, {M} molecules; {len(all_weights)} losses; device {device}, {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeat}")
    print(f"{'variant':<42}{'fwd+bwd (ms)':>14}{'ratio':>10}")
    print(f"{'forces alone (WeightedLoss)':<42}{t_forces * 1e3:>14.3f}{1.0:>10.2f}")
    print(f"{'full loss dict (WeightedLoss)':<42}{t_full * 1e3:>14.3f}{t_full / t_forces:>10.2f}")
    print(f"{'full loss dict (straightforward)':<42}{t_naive * 1e3:>14.3f}{t_naive / t_forces:>10.2f}")
    label = "forces alone (convention mace_scf)"
    print(f"{label:<42}{t_forces_parity * 1e3:>14.3f}{t_forces_parity / t_forces:>10.2f}")
    print(f"{'full loss dict (convention mace_scf)':<42}{t_full_parity * 1e3:>14.3f}{t_full_parity / t_forces:>10.2f}")
    print(f"full / forces = {t_full / t_forces:.2f}   (goal <= 3)")
    print(f"full / forces, mace_scf convention = {t_full_parity / t_forces_parity:.2f}   (goal <= 3)")
    print(f"straightforward / full = {t_naive / t_full:.2f}   (goal >= 2)")


if __name__ == "__main__":
    main()

"""Physical constants, in scfdata's units (eV, Å, e). Each recomputed from scipy.constants in the tests.

Written as literals: importing scipy.constants (and with it scipy) costs a workflow job ~0.1 s that the
jobs using only numpy (e.g. ESPs of open-boundary configs) would otherwise pay for one number.
"""

#: Coulomb constant k_e = e/(4π ε0)·1e10 in eV·Å/e², CODATA 2022 (scipy 1.17 gives the same).
K_E: float = 14.399645468667815

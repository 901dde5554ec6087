"""Physical constants, in scfdata's units (eV, Å, e). Each recomputed from scipy.constants in the tests."""

import scipy.constants as _c

#: Coulomb constant k_e = 1/(4π ε0) in eV·Å/e² (14.3996454784...).
K_E: float = _c.e / (4.0 * _c.pi * _c.epsilon_0) * 1e10

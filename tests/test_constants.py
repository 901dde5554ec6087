"""Physical constants recomputed from scipy.constants (scfdata.constants holds them as literals)."""

import math

import scipy.constants as c

from scfdata.constants import K_E


def test_coulomb_constant():
    want = 1.0 / (4 * math.pi * c.epsilon_0) * c.e / 1e-10  # eV·Å/e²: e²/(4πε0 Å) in J, / e in eV
    assert abs(K_E - want) <= 1e-15 * want
    assert abs(K_E - 14.3996454784) < 1e-8

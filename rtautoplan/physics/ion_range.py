"""Stopping power, CSDA range and energy of protons and carbon ions in water; CT → stopping-power ratio.

Stopping power: the Bethe formula (ICRU Report 49, eq. 2.1) for a bare ion of charge z and mass M in
liquid water,

    S/ρ = K·z²·(Z/A)/β² · [½·ln(2·mₑc²·β²γ²·T_max / I²) − β²],   T_max = 2mₑc²β²γ² / (1 + 2γmₑ/M + (mₑ/M)²)

with K = 0.307075 MeV cm² mol⁻¹, Z/A = 0.55509 mol g⁻¹ and the mean excitation energy I = 75 eV
(ICRU 49, the value NIST PSTAR uses). The density-effect term is zero below 500 MeV/u in water
(Sternheimer parameters: X = log10(βγ) < X₀ = 0.24), and shell, Barkas and Bloch corrections are
neglected: they change the stopping power by < 1 % above 10 MeV/u. The CSDA range is the integral of
dE/S from 10 MeV/u up, plus the residual range at 10 MeV/u taken from NIST PSTAR (0.1230 g/cm² for
protons; carbon: the same scaled by (M_C/M_p)/z² at equal velocity, ICRU 73 §3). Ranges are in mm of
water (ρ = 1 g/cm³), energies in MeV (protons) or MeV/u (carbon, kinetic energy per nucleon).

ICRU Report 90 (2014) recommends I = 78 eV for water, which lengthens ranges by ≈ 0.5 % (1.6 mm at
230 MeV): a beam model is commissioned to the measured ranges of its machine, so pass ``i_ev`` (or
rescale) from commissioning data; the defaults reproduce PSTAR (see tests/test_ion.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

ME_C2 = 0.51099895  # electron rest energy (MeV), CODATA 2018
K_BETHE = 0.307075  # 4π N_A r_e² m_e c² (MeV cm²/mol), PDG
Z_OVER_A_WATER = 0.55509  # mol/g, liquid water
I_WATER_EV = 75.0  # ICRU 49 / NIST PSTAR
E_LOW = 10.0  # MeV/u: below it the residual range is tabulated (PSTAR), not integrated
R_LOW_PROTON_G_CM2 = 0.1230  # NIST PSTAR CSDA range of 10 MeV protons in water


@dataclass(frozen=True)
class Ion:
    """A fully stripped ion: charge number z, mass number a and rest energy (MeV)."""

    name: str
    z: int
    a: int
    mass_mev: float

    @property
    def mass_per_nucleon(self) -> float:
        return self.mass_mev / self.a


PROTON = Ion("proton", 1, 1, 938.27208816)  # CODATA 2018
CARBON = Ion("carbon", 6, 12, 11174.862)  # ¹²C nucleus: 12 u − 6 mₑ + electron binding (AME 2016)
IONS = {"proton": PROTON, "p": PROTON, "carbon": CARBON, "c": CARBON, "12c": CARBON, "c12": CARBON}


def ion_of(ion: str | Ion) -> Ion:
    """The Ion named ``ion`` ('proton' or 'carbon'), or ``ion`` itself."""
    if isinstance(ion, Ion):
        return ion
    try:
        return IONS[ion.lower()]
    except KeyError:
        raise ValueError(f"unknown ion {ion!r}: use 'proton' or 'carbon'") from None


def stopping_power(energy_u: np.ndarray, ion: str | Ion = "proton", i_ev: float = I_WATER_EV) -> np.ndarray:
    """Mass electronic stopping power of water (MeV cm²/g) for the ion at kinetic energy ``energy_u``
    (MeV per nucleon; MeV for protons). Bethe formula, module docstring."""
    ion = ion_of(ion)
    e = np.asarray(energy_u, float)
    gamma = 1.0 + e / ion.mass_per_nucleon
    beta2 = 1.0 - 1.0 / gamma**2
    bg2 = beta2 * gamma**2
    ratio = ME_C2 / ion.mass_mev
    t_max = 2.0 * ME_C2 * bg2 / (1.0 + 2.0 * gamma * ratio + ratio**2)
    log_term = 0.5 * np.log(2.0 * ME_C2 * bg2 * t_max / (i_ev * 1e-6) ** 2)
    return K_BETHE * Z_OVER_A_WATER * ion.z**2 / beta2 * (log_term - beta2)


@functools.lru_cache(maxsize=8)
def _range_table(ion: Ion, i_ev: float) -> tuple[np.ndarray, np.ndarray]:
    """(energy per nucleon, CSDA range in mm) on a log grid from 10 to 1000 MeV/u."""
    e = np.geomspace(E_LOW, 1000.0, 4001)
    s = stopping_power(e, ion, i_ev)  # MeV cm²/g for the whole ion
    dx = ion.a / s  # g/cm² per (MeV/u)
    r = np.concatenate([[0.0], np.cumsum(0.5 * (dx[1:] + dx[:-1]) * np.diff(e))])
    r_low = R_LOW_PROTON_G_CM2 * (ion.mass_mev / PROTON.mass_mev) / ion.z**2
    return e, 10.0 * (r + r_low)


def csda_range(energy_u: np.ndarray, ion: str | Ion = "proton", i_ev: float = I_WATER_EV) -> np.ndarray:
    """CSDA range in water (mm) at kinetic energy ``energy_u`` (MeV/u; MeV for protons), 10–1000 MeV/u."""
    e, r = _range_table(ion_of(ion), float(i_ev))
    ea = np.asarray(energy_u, float)
    if np.any((ea < E_LOW) | (ea > e[-1])):
        raise ValueError(f"energy outside {E_LOW:g}–{e[-1]:g} MeV/u")
    return np.exp(np.interp(np.log(ea), np.log(e), np.log(r)))


def energy_for_range(range_mm: np.ndarray, ion: str | Ion = "proton", i_ev: float = I_WATER_EV) -> np.ndarray:
    """Kinetic energy (MeV/u; MeV for protons) whose CSDA range in water is ``range_mm``."""
    e, r = _range_table(ion_of(ion), float(i_ev))
    ra = np.asarray(range_mm, float)
    if np.any((ra < r[0]) | (ra > r[-1])):
        raise ValueError(f"range outside {r[0]:.2f}–{r[-1]:.0f} mm of water")
    return np.exp(np.interp(np.log(ra), np.log(r), np.log(e)))


def residual_energy(range_mm: np.ndarray, ion: str | Ion = "proton", i_ev: float = I_WATER_EV) -> np.ndarray:
    """Energy (MeV/u) of an ion with residual CSDA range ``range_mm`` ≥ 0; below the 10 MeV/u table
    the range–energy relation is extended by Bragg–Kleeman, R ∝ E^1.75 (Bortfeld 1997, p ≈ 1.75 at
    low energy); 0 at range 0."""
    e, r = _range_table(ion_of(ion), float(i_ev))
    ra = np.maximum(np.asarray(range_mm, float), 0.0)
    low = ra < r[0]
    out = np.exp(np.interp(np.log(np.where(low, r[0], ra)), np.log(r), np.log(e)))
    return np.where(low, E_LOW * (ra / r[0]) ** (1 / 1.75), out)


# HU → proton stopping-power ratio to water (SPR). A generic piecewise-linear curve in the shape of a
# stoichiometric calibration (Schneider, Pedroni & Lomax, Phys Med Biol 41:111, 1996): air (dry air
# 1.205 mg/cm³, SPR ≈ 0.001), inflated lung (≈ 0.3 at −700 HU), adipose tissue (0.95 at −100 HU),
# water (1.00 at 0 HU), muscle (1.04 at 40 HU), cortical bone (1.58 at 1000 HU), dense bone (1.85 at
# 1500 HU), extended with the bone slope to the 12-bit CT maximum 3071 HU. Ion SPRs differ from
# proton SPRs by < 0.5 % in tissues (ICRU 73), so the same table serves carbon. Clinical use must
# pass the scanner's own calibration (HLUT).
HU_SPR_TABLE = np.array(
    [
        (-1000.0, 0.001),
        (-700.0, 0.300),
        (-100.0, 0.950),
        (0.0, 1.000),
        (40.0, 1.040),
        (1000.0, 1.580),
        (1500.0, 1.850),
        (3071.0, 2.698),
    ]
)


def hu_to_spr(hu: np.ndarray, table: np.ndarray = HU_SPR_TABLE) -> np.ndarray:
    """Stopping-power ratio to water of CT numbers ``hu``, piecewise linear in ``table`` (rows HU,
    SPR), clamped outside. Pass the result as the density to ``geometry.radiological_depth`` to get
    water-equivalent depths (mm)."""
    table = np.asarray(table, float)
    return np.interp(np.asarray(hu, float), table[:, 0], table[:, 1])

"""Sensors and band wavelengths: what each guide band *is*, declared by the user, never guessed from its name.

A guide entry of the manifest declares its ``sensor`` (one of :data:`SENSORS`; band names looked up there, with
``B02`` read as ``B2``) or each band's ``wavelengths`` (micrometres, one per band). Composites follow the
wavelengths: near infrared, red and green as R, G, B (false colour) where the bands have them, else red, green
and blue (true colour); bands of unknown wavelength give a plain composite of the first three bands, titled as
such, with a note on how to declare them.
"""

from __future__ import annotations

import re

__all__ = ["SENSORS", "band_wavelengths", "composite", "WINDOWS"]

#: Centre wavelengths (micrometres) of each sensor's bands, from the sensors' handbooks (USGS, ESA, JAXA/METI).
SENSORS: dict[str, dict[str, float]] = {
    "ASTER": {"B1": 0.556, "B2": 0.661, "B3N": 0.807, "B4": 1.656, "B5": 2.167, "B6": 2.209, "B7": 2.262,
              "B8": 2.336, "B9": 2.400, "B10": 8.291, "B11": 8.634, "B12": 9.075, "B13": 10.657, "B14": 11.318},
    "Landsat 8/9 OLI": {"B1": 0.443, "B2": 0.482, "B3": 0.561, "B4": 0.655, "B5": 0.865, "B6": 1.609,
                        "B7": 2.201, "B8": 0.590, "B9": 1.373},
    "Landsat 4-5 TM": {"B1": 0.485, "B2": 0.560, "B3": 0.660, "B4": 0.830, "B5": 1.650, "B7": 2.215},
    "Landsat 7 ETM+": {"B1": 0.485, "B2": 0.560, "B3": 0.660, "B4": 0.835, "B5": 1.650, "B7": 2.220, "B8": 0.710},
    "Sentinel-2 MSI": {"B1": 0.443, "B2": 0.490, "B3": 0.560, "B4": 0.665, "B5": 0.705, "B6": 0.740, "B7": 0.783,
                       "B8": 0.842, "B8A": 0.865, "B9": 0.945, "B10": 1.375, "B11": 1.610, "B12": 2.190},
}
#: Wavelength windows (micrometres) of the composites' colours.
WINDOWS = {"blue": (0.43, 0.52), "green": (0.52, 0.60), "red": (0.62, 0.70), "near infrared": (0.76, 0.90)}


def _canonical(name: str) -> str:
    """``B02`` -> ``B2``, ``b8a`` -> ``B8A``, ``SR_B4`` -> ``B4``."""
    m = re.search(r"B0*(\d+[A-Z]?)$", name.upper())
    return f"B{m.group(1)}" if m else name.upper()


def band_wavelengths(names: list[str], *, sensor: str | None = None,
                     wavelengths: list[float] | None = None) -> dict[str, float]:
    """Each band's centre wavelength (micrometres) from the declared ``sensor`` or ``wavelengths``; {} when
    neither is declared. Raises ValueError naming the fault (an unknown sensor, a band the sensor lacks, a count
    that does not match).

    Examples
    --------
    >>> band_wavelengths(["B02", "B03", "B04"], sensor="Landsat 8/9 OLI")
    {'B02': 0.482, 'B03': 0.561, 'B04': 0.655}
    >>> band_wavelengths(["b", "g"], wavelengths=[0.48, 0.56])
    {'b': 0.48, 'g': 0.56}
    """
    if wavelengths is not None:
        if len(wavelengths) != len(names):
            raise ValueError(f"'wavelengths' gives {len(wavelengths)} values for {len(names)} bands ({names})")
        return {n: float(w) for n, w in zip(names, wavelengths)}
    if sensor is None:
        return {}
    table = next((t for s, t in SENSORS.items() if s.lower() == sensor.lower()), None)
    if table is None:
        raise ValueError(f"unknown sensor {sensor!r}: one of {', '.join(SENSORS)}, or give each band's "
                         f"'wavelengths' (micrometres) instead")
    missing = [n for n in names if _canonical(n) not in table]
    if missing:
        raise ValueError(f"the sensor {sensor} has no band named {', '.join(missing)} (its bands: {', '.join(table)}); "
                         f"name the bands as the sensor does, or give 'wavelengths' instead")
    return {n: table[_canonical(n)] for n in names}


def _nearest(wl: dict[str, float], window: tuple[float, float]) -> str | None:
    inside = {n: w for n, w in wl.items() if window[0] <= w <= window[1]}
    centre = sum(window) / 2
    return min(inside, key=lambda n: abs(inside[n] - centre)) if inside else None


def composite(names: list[str], wavelengths: dict[str, float]) -> tuple[tuple[str, str, str], str]:
    """The bands of a composite (R, G, B) and its title: false colour (near infrared, red, green) where the
    declared wavelengths have them, else true colour (red, green, blue), else the first three bands.

    Examples
    --------
    >>> composite(["B2", "B3", "B4", "B5"], band_wavelengths(["B2", "B3", "B4", "B5"], sensor="Landsat 8/9 OLI"))
    (('B5', 'B4', 'B3'), 'False-colour composite (R, G, B = near infrared B5, red B4, green B3)')
    >>> composite(["B1", "B2", "B3"], band_wavelengths(["B1", "B2", "B3"], sensor="Landsat 4-5 TM"))
    (('B3', 'B2', 'B1'), 'True-colour composite (R, G, B = red B3, green B2, blue B1)')
    >>> composite(["k", "th", "u"], {})[1]
    "Composite of the first three bands (R, G, B = k, th, u; declare a guide entry's 'sensor' or 'wavelengths' for true or false colour)"
    """
    pick = {c: _nearest(wavelengths, w) for c, w in WINDOWS.items()}
    for kind, colours in (("False", ("near infrared", "red", "green")), ("True", ("red", "green", "blue"))):
        bands = [pick[c] for c in colours]
        if all(bands):
            return tuple(bands), (f"{kind}-colour composite (R, G, B = "
                                  + ", ".join(f"{c} {b}" for c, b in zip(colours, bands)) + ")")
    first = tuple((list(names) * 3)[:3])
    why = ("the declared wavelengths hold no red, green and blue" if wavelengths else
           "declare a guide entry's 'sensor' or 'wavelengths' for true or false colour")
    return first, f"Composite of the first three bands (R, G, B = {', '.join(first)}; {why})"

"""A synthetic study area modelled on the Cuonadong dome, with its true fine fields kept.

The paper's data are not public. :func:`generate_study_area` writes the same kinds of files a user brings
(GeoTIFF, GeoPackage, CSV) and the manifest that :func:`lithocore.data.load_study_area` reads, so the
synthetic area goes through exactly the path real data take. Everything follows from one seed.

The geology is a metamorphic dome: a Cambrian granitic-gneiss core, a ring of Palaeozoic biotite quartz
schist carrying thin, boudinaged strips of Early Palaeozoic marble, then Triassic and Jurassic
sandstone-and-slate, cut by Himalayan leucogranite bodies and dykes, with Quaternary strata in the valleys,
lakes in the lows and snow on the peaks (class 8, "lakes and snow", as the paper's).

It is made hard on purpose, as real maps are:

* the two sandstone-and-slate units are the *same* rocks (alternating sandstone and slate beds, same
  spectra, chemistry and susceptibility): they differ only by position in the dome and by bedding texture
  (Triassic beds are thinner, with a little more slate);
* marble and schist look alike where skarn alteration (calc-silicates, chlorite) has grown near the
  leucogranite: both show the 2.33 µm Mg-OH / carbonate absorption;
* topographic shading multiplies every band, SWIR bands are 30 m, there is sensor noise, the geochemistry
  is a 2 km survey of a dispersed field with analytical noise, and the magnetics is a 2 km grid of a field
  observed above the ground.

A per-pixel classifier therefore stops well short of the ceiling; spatial context is needed for the
look-alike units (see :func:`rf_calibration`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from .area import Grid
from .outputs import write_geotiff

__all__ = ["SyntheticSpec", "UNITS", "BANDS", "OXIDES", "generate_study_area", "default_area_dir",
           "rf_calibration", "MATERIALS", "SPECTRA", "COMPOSITION", "SUSCEPTIBILITY", "RESISTANCE",
           "PREDICT_GROUNDS", "ground_polygon", "write_ground"]

#: (id, name, colour) of the map units, as the paper's Figure 8.
UNITS = [
    (1, "Jurassic sandstone and slate", "#c8b57a"),
    (2, "Early Paleozoic marble", "#6fa8dc"),
    (3, "Triassic sandstone and slate", "#93c47d"),
    (4, "Cambrian granitic gneiss", "#e69138"),
    (5, "Paleozoic biotite quartz schist", "#8e7cc3"),
    (6, "Quaternary strata", "#fff2cc"),
    (7, "Himalayan leucogranite", "#e06666"),
    (8, "Lakes and snow", "#1c4587"),
]
#: ASTER VNIR-SWIR bands and their centres (µm).
BANDS = [("B1", 0.556), ("B2", 0.661), ("B3N", 0.807), ("B4", 1.656), ("B5", 2.167), ("B6", 2.209),
         ("B7", 2.262), ("B8", 2.336), ("B9", 2.400)]
OXIDES = ["SiO2", "Al2O3", "CaO", "MgO", "Fe2O3", "Na2O", "K2O"]

# Materials: the rocks the pixels are made of (a map unit may hold more than one).
MATERIALS = ["sandstone", "slate", "marble", "gneiss", "schist", "quaternary", "leucogranite", "water", "snow",
             "skarn"]
_M = {m: i for i, m in enumerate(MATERIALS)}

# Reflectance (0-1) in ASTER bands 1-9. Ferric iron lowers B1 in sandstone; Al-OH (muscovite) dips at B6 in
# leucogranite and schist; carbonate / Mg-OH dips at B8 in marble and skarn; snow is dark in the SWIR;
# water is dark beyond the red. See ../shared/REFERENCE.md.
SPECTRA = np.array([
    [0.20, 0.26, 0.29, 0.36, 0.33, 0.315, 0.31, 0.30, 0.29],   # sandstone (iron-stained)
    [0.11, 0.12, 0.13, 0.17, 0.155, 0.143, 0.145, 0.14, 0.138],  # slate
    [0.37, 0.39, 0.41, 0.46, 0.43, 0.43, 0.42, 0.335, 0.41],   # marble (calcite 2.34 µm)
    [0.21, 0.23, 0.25, 0.31, 0.29, 0.27, 0.255, 0.262, 0.255],  # granitic gneiss (biotite Fe-OH at B7)
    [0.20, 0.22, 0.24, 0.30, 0.28, 0.245, 0.262, 0.255, 0.25],  # biotite quartz schist (muscovite Al-OH)
    [0.15, 0.18, 0.27, 0.31, 0.28, 0.268, 0.262, 0.255, 0.25],  # Quaternary (sediment, sparse vegetation)
    [0.34, 0.36, 0.38, 0.45, 0.42, 0.35, 0.40, 0.395, 0.39],   # leucogranite (muscovite Al-OH 2.2 µm)
    [0.06, 0.045, 0.025, 0.012, 0.01, 0.01, 0.01, 0.01, 0.01],  # water
    [0.86, 0.85, 0.80, 0.10, 0.05, 0.05, 0.048, 0.045, 0.045],  # snow
    [0.25, 0.27, 0.29, 0.35, 0.32, 0.30, 0.30, 0.255, 0.30],   # skarn (calc-silicate, chlorite Mg-OH)
], dtype=np.float32)

# Major oxides, wt % (REFERENCE.md's ranges; leucogranite as the paper: SiO2 >= 72, CaO <= 2 ...).
# Quaternary, water and snow rows are placeholders: their chemistry is that of the upstream rocks.
COMPOSITION = np.array([
    [82.0, 7.5, 1.5, 1.0, 2.5, 1.0, 1.5],     # sandstone
    [61.0, 18.0, 1.2, 2.5, 6.5, 1.5, 3.5],    # slate
    [8.0, 1.5, 48.0, 2.5, 0.8, 0.15, 0.3],    # marble
    [70.0, 14.5, 2.0, 1.0, 3.2, 3.2, 4.5],    # granitic gneiss
    [69.0, 14.0, 2.0, 2.0, 5.0, 2.0, 3.0],    # biotite quartz schist
    [70.0, 12.0, 4.0, 1.5, 3.5, 2.0, 2.5],    # Quaternary (replaced by the upstream mix)
    [73.5, 14.8, 0.7, 0.2, 0.8, 4.0, 4.5],    # leucogranite
    [70.0, 12.0, 4.0, 1.5, 3.5, 2.0, 2.5],    # water (replaced)
    [70.0, 12.0, 4.0, 1.5, 3.5, 2.0, 2.5],    # snow (replaced)
    [40.0, 8.0, 30.0, 8.0, 6.0, 0.5, 0.5],    # skarn
], dtype=np.float32)

# Magnetic susceptibility, SI (REFERENCE.md; the paper: leucogranite medium-high).
SUSCEPTIBILITY = np.array([0.15e-3, 0.5e-3, -0.01e-3, 2.0e-3, 0.8e-3, 0.3e-3, 4.0e-3, 0.0, 0.0, 1.5e-3],
                          dtype=np.float32)
# Resistance to erosion (0-1), which sets the relief: granite, marble and gneiss stand up, slate and schist
# weather down, unconsolidated Quaternary and water lie lowest (order as MATERIALS).
RESISTANCE = np.array([0.55, 0.35, 0.8, 0.7, 0.45, 0.1, 0.75, 0.0, 0.5, 0.6], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. The defaults are the paper's scene: 1611 x 1650 pixels of 15 m, 2 km surveys."""

    height: int = 1611  # pixels
    width: int = 1650  # pixels
    pixel_size: float = 15.0  # metres
    coarse_spacing: float = 2000.0  # metres, geochemical and aeromagnetic survey spacing
    seed: int = 0
    origin: tuple[float, float] = (395000.0, 3105000.0)  # UTM 46N (Cuonadong), top-left corner
    epsg: int = 32646
    inclination: float = 43.0  # degrees, geomagnetic field at Cuonadong
    declination: float = 0.0  # degrees
    field_nt: float = 49000.0  # nT, total field intensity
    flight_height: float = 150.0  # metres above ground of the fine ("true") magnetic field
    sun_azimuth: float = 150.0  # degrees, ASTER morning overpass
    sun_elevation: float = 45.0  # degrees
    noise: float = 0.006  # reflectance, sensor noise (std)
    dispersion: float = 20.0  # metres, std of the Gaussian that disperses the surface geochemistry (soil creep)
    version: int = 5  # bump when the generator changes, so caches are rebuilt (5: the sensor declared)
    #: the ground to predict written into the manifest (``predict:``; its labels withheld, kept to check the
    #: promised accuracy): "east" (the east quarter, a strip beside the labels), "gap" (an interior square of a
    #: third of each side), "" (none: every pixel labelled, nothing to predict)
    predict: str = "east"

    def __post_init__(self):
        if self.height < 32 or self.width < 32:
            raise ValueError(f"a synthetic area needs at least 32 x 32 pixels, got {self.height} x {self.width}")
        if self.coarse_spacing < 4 * self.pixel_size:
            raise ValueError("coarse_spacing must be at least 4 pixels")
        if self.predict not in PREDICT_GROUNDS:
            raise ValueError(f"predict must be one of {sorted(PREDICT_GROUNDS)}, got {self.predict!r}")

    @property
    def coarse_factor(self) -> int:
        return max(1, int(round(self.coarse_spacing / self.pixel_size)))

    def key(self) -> str:
        return (f"synthetic-{self.height}x{self.width}-{self.pixel_size:g}m-{self.coarse_spacing:g}m-seed{self.seed}"
                f"-v{self.version}" + (f"-predict-{self.predict}" if self.predict else ""))


#: The named grounds to predict of the synthetic area, as fractions (top, left, bottom, right) of the scene.
PREDICT_GROUNDS = {"": None, "east": (0.0, 0.75, 1.0, 1.0), "gap": (1 / 3, 1 / 3, 2 / 3, 2 / 3)}


def ground_polygon(grid: Grid, fractions: tuple[float, float, float, float]):
    """A rectangle of the scene given as fractions (top, left, bottom, right) of its rows and columns, in the
    grid's coordinates (a shapely polygon; pixel edges, so it rasterises to whole pixels).

    >>> from rasterio.transform import from_origin
    >>> g = Grid(CRS.from_epsg(32646), from_origin(0, 100, 1, 1), 100, 100)
    >>> ground_polygon(g, (0, 0.75, 1, 1)).bounds
    (75.0, 0.0, 100.0, 100.0)
    """
    from shapely.geometry import box

    t, l, b, r = fractions
    r0, c0 = round(t * grid.height), round(l * grid.width)
    r1, c1 = round(b * grid.height), round(r * grid.width)
    (x0, y0), (x1, y1) = grid.transform * (c0, r0), grid.transform * (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def write_ground(path: str | os.PathLike, polygon, crs) -> Path:
    """Write one polygon as a GeoPackage (the manifest's ``predict`` file)."""
    import geopandas as gpd

    path = Path(path)
    gpd.GeoDataFrame({"name": ["ground to predict"]}, geometry=[polygon], crs=crs).to_file(path, driver="GPKG")
    return path


def default_area_dir(spec: SyntheticSpec, root: str | os.PathLike | None = None) -> Path:
    """Where the generated files of ``spec`` are cached (``data/generated/<key>`` in the project)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent / "data" / "generated"
    return root / spec.key()


# ------------------------------------------------------------------------------------------- fields
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian random field with correlation length ``scale`` pixels, zero mean, unit std.

    Drawn on a grid ``scale/4`` times coarser and interpolated up, so large scales cost little.
    """
    step = max(1.0, scale / 4.0)
    small = (max(4, math.ceil(shape[0] / step) + 4), max(4, math.ceil(shape[1] / step) + 4))
    field = ndimage.gaussian_filter(rng.standard_normal(small), sigma=scale / step, mode="wrap")
    rows = np.linspace(1, (shape[0] - 1) / step + 1, shape[0])
    cols = np.linspace(1, (shape[1] - 1) / step + 1, shape[1])
    out = ndimage.map_coordinates(field, np.meshgrid(rows, cols, indexing="ij"), order=3, mode="nearest")
    out -= out.mean()
    return (out / (out.std() + 1e-12)).astype(np.float32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma=sigma, mode="nearest") if sigma > 0 else a


def _dome(spec: SyntheticSpec, rng: np.random.Generator):
    """The dome's coordinate ``s`` (0 at the core, 1 at the rim; folded at several scales, down to well below the
    2 km survey cell, so smooth layers cannot follow the contacts), its radius and centre."""
    H, W = spec.height, spec.width
    R = min(H, W) / 2.0  # the dome fills the scene whatever its size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cy, cx = H * (0.5 + rng.uniform(-0.06, 0.06)), W * (0.5 + rng.uniform(-0.06, 0.06))
    theta = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / (1.0 * R)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / (0.78 * R)
    s = np.sqrt(u**2 + v**2)
    s = (s + 0.07 * _smooth_noise(rng, (H, W), R / 2.5) + 0.03 * _smooth_noise(rng, (H, W), R / 10)
         + 0.03 * _smooth_noise(rng, (H, W), R / 25))
    return s, R, cx, cy


def _bedrock(s: np.ndarray, R: float, cx: float, cy: float, rng: np.random.Generator):
    """The bedrock units (1..7 without the Quaternary), which pixels of the sandstone-and-slate units are
    sandstone beds, and the leucogranite."""
    H, W = s.shape
    s_px = s * R  # dome coordinate in pixels: distance "up-section" from the core
    unit = np.full((H, W), 1, dtype=np.uint8)  # Jurassic outside
    unit[s + 0.05 * _smooth_noise(rng, (H, W), R / 20) + 0.04 * _smooth_noise(rng, (H, W), R / 50) < 0.80] = 3  # Triassic, an interfingering top
    unit[s < 0.62] = 5  # schist
    unit[s < 0.38] = 4  # gneiss core
    # Marble: thin strips at the top of the schist and a boudinaged one inside it.
    thick = max(3.0, 0.016 * R)
    top = (s_px > 0.62 * R - thick) & (s_px <= 0.62 * R)
    inner = (np.abs(s_px - 0.50 * R) < 0.45 * thick) & (_smooth_noise(rng, (H, W), R / 6) > -0.3)
    unit[top | inner] = 2
    # Bedding in the sandstone-and-slate units: beds follow the dome coordinate (parallel to contacts).
    wiggle = 2.0 * _smooth_noise(rng, (H, W), 40)
    period = np.where(unit == 3, 5.0, 11.0)  # pixels: Triassic beds are thinner
    sand_share = np.where(unit == 3, 0.44, 0.56)
    sandstone_bed = np.mod((s_px + wiggle) / period, 1.0) < sand_share
    # Leucogranite: irregular bodies in the core and schist ring, and dykes radiating outwards.
    bodies = (_smooth_noise(rng, (H, W), R / 12) > 1.15) & (s < 0.75)
    dykes = np.zeros((H, W), dtype=bool)
    for _ in range(7):
        ang = rng.uniform(0, 2 * np.pi)
        r0, r1 = rng.uniform(0.15, 0.35), rng.uniform(0.6, 0.95)
        t = np.linspace(r0, r1, 400)
        bend = 0.05 * np.cumsum(rng.standard_normal(t.size)) / np.sqrt(t.size)
        px = cx + R * t * np.cos(ang + bend)
        py = cy + R * t * np.sin(ang + bend)
        ok = (px >= 0) & (px < W) & (py >= 0) & (py < H)
        dykes[py[ok].astype(int), px[ok].astype(int)] = True
    dykes = ndimage.binary_dilation(dykes, iterations=max(1, int(round(0.004 * R))))
    leuco = bodies | dykes
    unit[leuco] = 7
    return unit, sandstone_bed, leuco


def _relief(unit: np.ndarray, sandstone_bed: np.ndarray, R: float, rng: np.random.Generator):
    """The DEM and the Quaternary valley fill (unit 6, written into ``unit``).

    Relief follows how resistant the rocks are (as erosion leaves it: granite, gneiss and marble stand higher,
    slate and schist lower, the Quaternary fills the valleys), smoothed over ~100 m so that a contact is a slope,
    not a step; ridges and valleys are independent random fields. Nothing encodes the dome's coordinate or a
    unit's contact: the twin sandstone-and-slate units differ by ~8 m on average, well inside the relief's noise.
    """
    H, W = unit.shape
    material_now = np.where((unit == 1) | (unit == 3), np.where(sandstone_bed, _M["sandstone"], _M["slate"]), 0)
    for uid, mat in ((2, "marble"), (4, "gneiss"), (5, "schist"), (7, "leucogranite")):
        material_now[unit == uid] = _M[mat]
    relief = 350.0 * (ndimage.gaussian_filter(RESISTANCE[material_now], 6.0) - 0.5)
    ridge = _smooth_noise(rng, (H, W), R / 5)
    valley_dist = np.abs(_smooth_noise(rng, (H, W), R / 4))
    dem = (4900.0 + relief + 450.0 * ridge + 250.0 * _smooth_noise(rng, (H, W), R / 15)
           + 60.0 * _smooth_noise(rng, (H, W), 6))
    dem -= 500.0 * np.exp(-(valley_dist / 0.18) ** 2)
    # Quaternary fills the valley floors, wider where the valley is low.
    quaternary = valley_dist < (0.05 + 0.05 * np.clip((4700.0 - dem) / 600.0, 0, 1))
    unit[quaternary] = 6
    dem[quaternary] = np.minimum(dem[quaternary], ndimage.uniform_filter(dem, 15)[quaternary])
    return dem, quaternary


def _lakes_and_snow(unit: np.ndarray, dem: np.ndarray, quaternary: np.ndarray, R: float, rng: np.random.Generator):
    """Lakes dammed here and there along the valley floors (not only the lowest ones), each with a flat surface
    (written into ``dem``), and snow patches on high ground that faces away from the sun, not every summit:
    neither is one elevation threshold, both are found from their spectra (unit 8, written into ``unit``)."""
    H, W = unit.shape
    lake_field = _smooth_noise(rng, (H, W), R / 20)
    lakes = quaternary & (lake_field > np.quantile(lake_field[quaternary], 0.8) if quaternary.any() else False)
    lakes = ndimage.binary_opening(lakes, iterations=2)
    lab, n = ndimage.label(lakes)
    if n:
        level = ndimage.minimum(dem, lab, np.arange(1, n + 1))
        dem[lakes] = np.asarray(level)[lab[lakes] - 1]
    gy, gx = np.gradient(ndimage.gaussian_filter(dem, 3.0))
    shade = gy * np.cos(np.deg2rad(135.0)) - gx * np.sin(np.deg2rad(135.0))  # facing away from a south-east sun
    snow_score = (dem - np.percentile(dem, 80)) / 200.0 + 0.02 * shade + 0.8 * _smooth_noise(rng, (H, W), R / 25)
    snow = (dem > np.percentile(dem, 80)) & (snow_score > np.percentile(snow_score, 98.8)) & ~quaternary
    unit[lakes | snow] = 8
    return lakes, snow


def _materials(unit: np.ndarray, sandstone_bed: np.ndarray, lakes: np.ndarray, snow: np.ndarray) -> np.ndarray:
    """The material of every pixel (what its spectrum, chemistry and susceptibility come from)."""
    material = np.full(unit.shape, _M["sandstone"], dtype=np.uint8)
    bedded = (unit == 1) | (unit == 3)
    material[bedded] = np.where(sandstone_bed, _M["sandstone"], _M["slate"])[bedded]
    for uid, mat in ((2, "marble"), (4, "gneiss"), (5, "schist"), (6, "quaternary"), (7, "leucogranite")):
        material[unit == uid] = _M[mat]
    material[lakes] = _M["water"]
    material[snow & ~lakes] = _M["snow"]
    return material


def _geology(spec: SyntheticSpec, rng: np.random.Generator):
    """Unit map (1..8), material map, dome coordinate, alteration, the DEM, snow and lakes (in this order of random
    draws: the same seed gives the same area as every earlier generator of this version)."""
    s, R, cx, cy = _dome(spec, rng)
    unit, sandstone_bed, leuco = _bedrock(s, R, cx, cy, rng)
    dem, quaternary = _relief(unit, sandstone_bed, R, rng)
    lakes, snow = _lakes_and_snow(unit, dem, quaternary, R, rng)
    # Skarn alteration: patches near the leucogranite and along the schist-marble contacts.
    near_granite = np.exp(-ndimage.distance_transform_edt(~leuco) / (0.06 * R))
    alteration = np.clip(0.9 * near_granite + 0.45 * _smooth_noise(rng, unit.shape, R / 15) - 0.05, 0, 1)
    material = _materials(unit, sandstone_bed, lakes, snow)
    return unit, material, s.astype(np.float32), alteration.astype(np.float32), dem.astype(np.float32), snow, lakes


def _abundances(material: np.ndarray, alteration: np.ndarray, sigma: float) -> np.ndarray:
    """Per-pixel material fractions, with alteration turning marble and schist partly to skarn, mixed at
    boundaries by a point-spread function of ``sigma`` pixels."""
    n = len(MATERIALS)
    ab = np.zeros((n, *material.shape), dtype=np.float32)
    for m in range(n):
        ab[m] = material == m
    for m, share in ((_M["marble"], 0.75), (_M["schist"], 0.55)):
        moved = ab[m] * alteration * share
        ab[m] -= moved
        ab[_M["skarn"]] += moved
    return np.stack([_blur(a, sigma) for a in ab])


def _illumination(dem: np.ndarray, res: float, azimuth: float, elevation: float) -> np.ndarray:
    """cos(incidence) / cos(solar zenith): the factor that topography multiplies reflectance by."""
    gy, gx = np.gradient(dem.astype(np.float64), res)
    slope = np.arctan(np.hypot(gx, gy))
    aspect = np.arctan2(-gx, gy)  # downslope direction, clockwise from north (rows increase southwards)
    zen, az = np.radians(90 - elevation), np.radians(azimuth)
    cos_i = np.cos(zen) * np.cos(slope) + np.sin(zen) * np.sin(slope) * np.cos(az - aspect)
    return np.clip(cos_i / np.cos(zen), 0.15, 1.6).astype(np.float32)


def _magnetic_field(chi: np.ndarray, res: float, spec: SyntheticSpec, height: float) -> np.ndarray:
    """Total-field anomaly (nT) of a layer of vertical prisms of susceptibility ``chi`` (1.5 km deep),
    induced by the present field, observed ``height`` metres above the ground (Fourier domain, Blakely 1995)."""
    H, W = chi.shape
    pad = (H // 4, W // 4)
    c = np.pad(chi - chi.mean(), ((pad[0],) * 2, (pad[1],) * 2), mode="reflect")
    ky = 2 * np.pi * np.fft.fftfreq(c.shape[0], d=res)
    kx = 2 * np.pi * np.fft.fftfreq(c.shape[1], d=res)
    KX, KY = np.meshgrid(kx, -ky)  # rows go south
    k = np.hypot(KX, KY)
    k[0, 0] = 1e-12
    inc, dec = np.radians(spec.inclination), np.radians(spec.declination)
    theta = np.sin(inc) + 1j * np.cos(inc) * (KX * np.sin(dec) + KY * np.cos(dec)) / k
    thickness = 1500.0
    kernel = 2 * np.pi * spec.field_nt * theta**2 * np.exp(-k * height) * (1 - np.exp(-k * thickness))
    kernel[0, 0] = 0
    out = np.real(np.fft.ifft2(np.fft.fft2(c) * kernel))
    return out[pad[0]:pad[0] + H, pad[1]:pad[1] + W].astype(np.float32)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    H, W = a.shape
    h, w = math.ceil(H / f), math.ceil(W / f)
    padded = np.pad(a, ((0, h * f - H), (0, w * f - W)), mode="edge")
    return padded.reshape(h, f, w, f).mean(axis=(1, 3))


# ----------------------------------------------------------------------------------------- generate
def generate_study_area(spec: SyntheticSpec | None = None, out_dir: str | os.PathLike | None = None, *,
                        overwrite: bool = False, progress: bool = True) -> Path:
    """Generate (or reuse) a synthetic study area and return the path of its manifest.

    Parameters
    ----------
    spec
        Size, seed and survey settings; the default is the paper's 1611 x 1650 scene.
    out_dir
        Folder for the files; default :func:`default_area_dir`. Written into a temporary folder beside it
        and renamed into place when complete, so an interrupted run leaves nothing half-written. A folder
        made by the same spec and generator version is reused.
    overwrite
        Regenerate even when a matching folder exists.
    progress
        Show a progress bar.

    Examples
    --------
    >>> import tempfile
    >>> m = generate_study_area(SyntheticSpec(height=96, width=96, coarse_spacing=300, seed=1),
    ...                         Path(tempfile.mkdtemp()) / "area", progress=False)
    >>> m.name, sorted(p.name for p in m.parent.glob("*.tif"))[:2]
    ('manifest.yaml', ['aeromag_2km.tif', 'aster_swir_30m.tif'])
    """
    from tqdm.auto import tqdm

    spec = spec or SyntheticSpec()
    out = Path(out_dir) if out_dir is not None else default_area_dir(spec)
    meta_path = out / "generation.json"
    if out.exists() and not overwrite:
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("spec") == json.loads(json.dumps(asdict(spec))):
                return out / "manifest.yaml"
        except (OSError, ValueError):
            pass
        raise FileExistsError(f"{out}: exists but was not made by this spec; pass overwrite=True or another folder")

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        steps = tqdm(total=7, desc="synthetic area", disable=not progress)
        rng = np.random.default_rng(spec.seed)  # one stream, drawn in this order: the same seed, the same area
        grid = Grid(CRS.from_epsg(spec.epsg), from_origin(*spec.origin, spec.pixel_size, spec.pixel_size), spec.width,
                    spec.height)
        unit, material, dome, alteration, dem, snow, lakes = _geology(spec, rng)
        steps.update()
        ab = _abundances(material, alteration, sigma=0.7)
        image = _image(spec, rng, ab, material, dem, grid)
        steps.update()
        dem_fine, dgrid = _dem_survey(spec, rng, dem, grid)
        steps.update()
        samples = _geochemistry(spec, rng, ab, material)
        steps.update()
        true_mag, mag_coarse, mag_grid = _aeromagnetics(spec, rng, ab, grid)
        steps.update()
        labels = unit.astype(np.uint8)
        _write_layers(tmp, spec, grid, labels, image, (dem_fine, dgrid), samples, (mag_coarse, mag_grid))
        _write_truth(tmp / "truth", spec, grid, samples["true"], true_mag, material, dome)
        steps.update()
        (tmp / "manifest.yaml").write_text(_manifest_text(spec))
        meta = dict(spec=asdict(spec), seconds=round(time.perf_counter() - t0, 1),
                    unit_fractions={name: float((labels == uid).mean()) for uid, name, _ in UNITS},
                    samples=int(len(samples["east"])))
        (tmp / "generation.json").write_text(json.dumps(meta, indent=2))
        steps.update()
        steps.close()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "manifest.yaml"


def _image(spec: SyntheticSpec, rng: np.random.Generator, ab: np.ndarray, material: np.ndarray, dem: np.ndarray,
           grid: Grid) -> dict:
    """The multispectral image: 15 m VNIR and 30 m SWIR, mixed, textured, shaded and noisy."""
    shape = material.shape
    texture = 1.0 + 0.05 * _smooth_noise(rng, shape, 8) + 0.03 * _smooth_noise(rng, shape, 60)
    refl = np.einsum("mhw,mb->bhw", ab, SPECTRA) * texture
    # per-band subtle variation (weathering, lichen) so bands are not perfectly collinear
    for b in range(refl.shape[0]):
        refl[b] *= 1.0 + 0.015 * _smooth_noise(rng, shape, 20)
    illum = _illumination(dem, spec.pixel_size, spec.sun_azimuth, spec.sun_elevation)
    snow_or_water = (material == _M["snow"]) | (material == _M["water"])
    refl *= np.where(snow_or_water, 0.5 * (illum + 1.0), illum)
    refl += spec.noise * rng.standard_normal(refl.shape).astype(np.float32)
    refl = np.clip(refl, 0.001, 1.0).astype(np.float32)
    swir = np.stack([_block_mean(refl[b], 2) for b in range(3, 9)]).astype(np.float32)
    swir += 0.5 * spec.noise * rng.standard_normal(swir.shape).astype(np.float32)
    return dict(vnir=refl[:3], swir=np.clip(swir, 0.001, 1.0), swir_grid=grid.coarsen(2))


def _dem_survey(spec: SyntheticSpec, rng: np.random.Generator, dem: np.ndarray, grid: Grid):
    """The DEM as delivered: at 12.5 m like PALSAR (a different grid: the loader resamples it), with noise."""
    res, dres = spec.pixel_size, 12.5
    dgrid = Grid(grid.crs, from_origin(*spec.origin, dres, dres), math.ceil(spec.width * res / dres),
                 math.ceil(spec.height * res / dres))
    rr = (np.arange(dgrid.height) + 0.5) * dres / res - 0.5
    cc = (np.arange(dgrid.width) + 0.5) * dres / res - 0.5
    dem_fine = ndimage.map_coordinates(dem, np.meshgrid(rr, cc, indexing="ij"), order=1, mode="nearest")
    dem_fine += rng.normal(0, 2.0, dem_fine.shape)
    return dem_fine.astype(np.float32), dgrid


def _geochemistry(spec: SyntheticSpec, rng: np.random.Generator, ab: np.ndarray, material: np.ndarray) -> dict:
    """The true surface chemistry (dispersed; the Quaternary, lakes and snow take the upstream mix) and stream-
    sediment samples, one per coarse cell, jittered, each the average of its catchment."""
    f, res = spec.coarse_factor, spec.pixel_size
    comp = np.einsum("mhw,mo->ohw", ab, COMPOSITION)
    comp *= 1.0 + 0.06 * _smooth_noise(rng, material.shape, 25)[None]
    bedrock = ~np.isin(material, [_M["quaternary"], _M["water"], _M["snow"]])
    upstream_sigma = 0.25 * f
    weight = _blur(bedrock.astype(np.float32), upstream_sigma)
    for o in range(len(OXIDES)):
        mix = _blur(np.where(bedrock, comp[o], 0), upstream_sigma) / np.maximum(weight, 1e-3)
        comp[o] = np.where(bedrock, comp[o], mix)
    true_geochem = np.stack([_blur(c, spec.dispersion / res) for c in comp]).astype(np.float32)
    catch = np.stack([_blur(c, 0.3 * f) for c in true_geochem])
    ny, nx = math.ceil(spec.height / f), math.ceil(spec.width / f)
    gy, gx = np.mgrid[0:ny, 0:nx]
    py = np.clip((gy + 0.5 + rng.uniform(-0.3, 0.3, gy.shape)) * f, 0, spec.height - 1).ravel()
    px = np.clip((gx + 0.5 + rng.uniform(-0.3, 0.3, gx.shape)) * f, 0, spec.width - 1).ravel()
    vals = catch[:, py.astype(int), px.astype(int)].T
    vals *= np.exp(rng.normal(0, 0.08, vals.shape))  # sampling + analytical noise (~8 % relative)
    return dict(true=true_geochem, east=spec.origin[0] + (px + 0.5) * res, north=spec.origin[1] - (py + 0.5) * res,
                values=vals)


def _aeromagnetics(spec: SyntheticSpec, rng: np.random.Generator, ab: np.ndarray, grid: Grid):
    """The induced field of the susceptibility map, true at 15 m, and as surveyed on a ~2 km grid."""
    chi = np.einsum("mhw,m->hw", ab, SUSCEPTIBILITY) * (1 + 0.2 * _smooth_noise(rng, ab.shape[1:], 30))
    true_mag = _magnetic_field(chi, spec.pixel_size, spec, spec.flight_height)
    mag_grid = grid.coarsen(spec.coarse_factor)
    mag_coarse = _block_mean(true_mag, spec.coarse_factor) + rng.normal(0, 5.0, (mag_grid.height, mag_grid.width))
    return true_mag, mag_coarse.astype(np.float32), mag_grid


def _write_layers(tmp: Path, spec: SyntheticSpec, grid: Grid, labels: np.ndarray, image: dict, dem: tuple,
                  samples: dict, mag: tuple) -> None:
    """The files a user would have: imagery, DEM, aeromagnetic grid, samples, the geological map and polygons."""
    write_geotiff(tmp / "aster_vnir_15m.tif", image["vnir"], grid, band_names=[b for b, _ in BANDS[:3]],
                  tags=dict(units="reflectance", wavelengths_um=[w for _, w in BANDS[:3]]))
    write_geotiff(tmp / "aster_swir_30m.tif", image["swir"], image["swir_grid"], band_names=[b for b, _ in BANDS[3:]],
                  tags=dict(units="reflectance", wavelengths_um=[w for _, w in BANDS[3:]]))
    write_geotiff(tmp / "dem_12p5m.tif", dem[0], dem[1], band_names=["elevation"], tags=dict(units="m"))
    write_geotiff(tmp / "aeromag_2km.tif", mag[0], mag[1], band_names=["tmi_anomaly"],
                  tags=dict(units="nT", inclination=spec.inclination, declination=spec.declination))
    cmap = {uid: tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) + (255,) for uid, _, c in UNITS}
    write_geotiff(tmp / "geology_15m.tif", labels, grid, nodata=0, colormap=cmap,
                  tags={f"class_{uid}": name for uid, name, _ in UNITS})
    _write_samples(tmp / "geochem_samples.csv", samples["east"], samples["north"], samples["values"])
    _write_polygons(tmp / "geology.gpkg", labels, grid)
    if PREDICT_GROUNDS[spec.predict]:
        write_ground(tmp / "predict.gpkg", ground_polygon(grid, PREDICT_GROUNDS[spec.predict]), grid.crs)


def _write_truth(truth: Path, spec: SyntheticSpec, grid: Grid, true_geochem: np.ndarray, true_mag: np.ndarray,
                 material: np.ndarray, dome: np.ndarray) -> None:
    """What no user has: the true fields everywhere, for checking fusion and the workbook's promises."""
    write_geotiff(truth / "geochem_true_15m.tif", true_geochem, grid, band_names=OXIDES, tags=dict(units="wt%"))
    write_geotiff(truth / "aeromag_true_15m.tif", true_mag, grid, band_names=["tmi_anomaly"],
                  tags=dict(units="nT", height_m=spec.flight_height))
    write_geotiff(truth / "materials_15m.tif", material, grid, nodata=None,
                  tags={f"material_{i}": m for i, m in enumerate(MATERIALS)})
    write_geotiff(truth / "dome_coordinate_15m.tif", dome, grid)


def _write_samples(path: Path, east: np.ndarray, north: np.ndarray, vals: np.ndarray) -> None:
    header = "sample_id,x,y," + ",".join(OXIDES)
    rows = [f"S{i:04d},{e:.1f},{n:.1f}," + ",".join(f"{v:.3f}" for v in row)
            for i, (e, n, row) in enumerate(zip(east, north, vals))]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def _write_polygons(path: Path, labels: np.ndarray, grid: Grid) -> None:
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    names = {uid: name for uid, name, _ in UNITS}
    feats = [(shape(geom), int(v)) for geom, v in shapes(labels, mask=labels > 0, transform=grid.transform)]
    gdf = gpd.GeoDataFrame({"unit_id": [v for _, v in feats], "unit": [names[v] for _, v in feats]},
                           geometry=[g for g, _ in feats], crs=grid.crs)
    gdf = gdf.dissolve(by="unit_id", as_index=False)[["unit_id", "unit", "geometry"]]
    gdf.to_file(path, layer="geology", driver="GPKG")


def _manifest_text(spec: SyntheticSpec) -> str:
    man = {
        "name": f"Synthetic Cuonadong-like dome ({spec.height} x {spec.width} px, seed {spec.seed})",
        "reference": "aster_vnir_15m.tif",
        "guide": [
            {"path": "aster_vnir_15m.tif", "bands": [b for b, _ in BANDS[:3]], "units": "reflectance",
             "sensor": "ASTER"},
            {"path": "aster_swir_30m.tif", "bands": [b for b, _ in BANDS[3:]], "units": "reflectance",
             "sensor": "ASTER"},
        ],
        "extra": [{"path": "dem_12p5m.tif", "name": "dem", "units": "m"}],
        "coarse": [{"path": "aeromag_2km.tif", "name": "magnetic", "units": "nT",
                    "inclination": spec.inclination, "declination": spec.declination}],
        "points": [{"path": "geochem_samples.csv", "crs": f"EPSG:{spec.epsg}", "x": "x", "y": "y",
                    "columns": OXIDES, "units": "wt%", "spacing": spec.coarse_factor * spec.pixel_size,
                    "method": "spline"}],
        "labels": {"path": "geology.gpkg", "field": "unit_id",
                   "classes": [{"id": uid, "name": name, "colour": c} for uid, name, c in UNITS]},
 **({"predict": "predict.gpkg"} if PREDICT_GROUNDS[spec.predict] else {}),
        "truth": {"geochemistry": "truth/geochem_true_15m.tif", "magnetic": "truth/aeromag_true_15m.tif"},
    }
    head = ("# Synthetic study area written by lithocore.synthetic.generate_study_area; "
            "paths are relative to this file.\n")
    return head + yaml.safe_dump(man, sort_keys=False, allow_unicode=True)




# -------------------------------------------------------------------------------------- calibration
def rf_calibration(area, *, context: bool = False, coarse: bool = True, only: list[str] | None = None,
                   n_per_class: int = 4000, n_trees: int = 100, seed: int = 0, n_test: int = 200_000,
                   stack: np.ndarray | None = None, block: int = 0) -> dict:
    """A quick per-pixel random forest on a loaded study area: how far per-pixel features get.

    Features are the guide bands, the extra layers and (``coarse=True``) the coarse layers resampled
    bilinearly; with ``context=True`` also the local mean and standard deviation of every guide band over 5, 15
    and 41 pixel windows (a crude stand-in for the spatial context, e.g. bedding texture, that an FCN learns).
    ``stack`` replaces those features by the given (C, H, W) stack: calibrate on what the models see (the
    fused default stack). ``only`` restricts the problem to the named classes. Training pixels: ``n_per_class``
    per class (at most half of the class) drawn at random; test pixels: a random sample of the others. With
    ``block`` > 0 the two sides are spatially apart, as in cross-validation: training pixels from the white
    squares of a ``block``-pixel checkerboard, test pixels from the black ones (with random pixels, any
    smooth multi-channel field lets a per-pixel classifier learn *where* a pixel is, which says nothing about
    unseen ground). Returns the scores of
    :func:`lithocore.metrics.scores` plus the confusion matrix.
    """
    from .area import NO_LABEL
    from .forest import neighbourhood_features, sample_pixels, train_forest
    from .metrics import confusion_matrix, scores

    feats = [*area.guide, *area.extra] if stack is None else list(stack)
    if coarse and stack is None:
        feats += [c.to_fine(area.grid) for c in area.coarse]
    if context:
        guide = np.stack(area.guide)
        feats += list(neighbourhood_features(guide, (5, 15, 41))[0][len(guide):])
    stack = np.stack(feats).astype(np.float32)
    names = list(area.classes.names)
    allowed = area.mask & (area.labels != NO_LABEL)
    if only:
        wanted = [names.index(n) for n in only]
        allowed &= np.isin(area.labels, wanted)
    if block:
        rr, cc = np.indices(area.shape)
        white = (rr // block + cc // block) % 2 == 0
        train = sample_pixels(area.labels, allowed & white, 0.5, seed, max_per_class=n_per_class)
        rest = np.flatnonzero(allowed & ~white)
    else:
        train = sample_pixels(area.labels, allowed, 0.5, seed, max_per_class=n_per_class)
        rest = np.setdiff1d(np.flatnonzero(allowed), train)
    rf, _ = train_forest(stack, area.labels, train, n_trees=n_trees, max_features=3, seed=seed)
    test = np.random.default_rng(seed).choice(rest, min(n_test, rest.size), replace=False)
    X = np.nan_to_num(stack.reshape(stack.shape[0], -1)[:, test].T)
    cm = confusion_matrix(area.labels.ravel()[test], rf.predict(X), len(names))
    if only:
        cm = cm[np.ix_(wanted, wanted)]
        names = list(only)
    return scores(cm, names) | {"confusion_matrix": cm.tolist(), "features": len(feats)}

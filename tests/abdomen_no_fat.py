"""Abdomens without fat planes, for the liver finder's tests (our own simple scenes, independent of
hccnode.phantom): every organ touches its neighbours, and what lies between organs is bowel and
mesentery of soft-tissue attenuation, not fat.

Attenuation by phase (HU), typical adult values from general abdominal CT experience (unenhanced,
portal venous at ~70 s, equilibrium at ~180 s): liver 60 / 110 / 95; fatty liver 25 / 75 / 62;
spleen 48 / 120 / 100; muscle 50 / 62 / 60; kidney 35 / 170 / 150; aortic blood 42 / 170 / 130;
bowel content and mesentery 25 (+-25) / 50 / 45; ascites 10 / 12 / 14; bone 450.

Coordinates: LPS in mm (x towards the patient's left, y posterior, z superior), origin at the
body centre; arrays are [z, y, x] with x increasing towards the patient's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

HU = {
    "unenhanced": dict(liver=60, fatty=25, spleen=48, muscle=50, kidney=35, blood=42, bowel=25, ascites=10, bone=450),
    "portal": dict(liver=110, fatty=75, spleen=120, muscle=62, kidney=170, blood=170, bowel=50, ascites=12, bone=450),
    "equilibrium": dict(liver=95, fatty=62, spleen=100, muscle=60, kidney=150, blood=130, bowel=45, ascites=14,
                        bone=450),
}


@dataclass
class Scene:
    phases: dict[str, np.ndarray]
    liver: np.ndarray
    spacing: tuple[float, float, float]
    bowel: np.ndarray            # where bowel and mesentery fill the belly
    notes: list[str] = field(default_factory=list)


def bowel_loops(shape, spacing, seed: int = 0) -> np.ndarray:
    """HU of a field of bowel loops (about 25 mm wide, walls 3 mm at 80 HU) whose content varies
    from loop to loop as in an unprepared abdomen: gas, fluid, faeces (mottled), oral contrast."""
    rng = np.random.default_rng(seed)
    dz, dy, dx = spacing
    seeds = ndimage.gaussian_filter(rng.normal(size=shape), (12.0 / dz, 12.0 / dy, 12.0 / dx))
    loops, n = ndimage.label(seeds > 0)
    content = rng.choice([-900.0, 10.0, 30.0, 250.0], size=n + 1, p=[0.3, 0.3, 0.3, 0.1])
    out = content[loops].astype(np.float32)
    out[loops == 0] = 10.0
    mottle = ndimage.gaussian_filter(rng.normal(0.0, 60.0, shape), 1.0)
    out += np.where(content[loops] == 30.0, mottle, 0.0).astype(np.float32)
    inner = ndimage.binary_erosion(loops > 0, iterations=max(1, int(round(3.0 / dy))))
    out[(loops > 0) & ~inner] = 80.0
    return out


def _ellipsoid(z, y, x, c, r):
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def scene(case: str = "standard", seed: int = 0, n: int = 224, px: float = 1.6, nz: int = 36, dz: float = 5.0,
          noise: float = 12.0) -> Scene:
    """case: standard | fatty | cirrhotic | big (liver across the midline touching the spleen)."""
    rng = np.random.default_rng(seed)
    zc = (np.arange(nz) - (nz - 1) / 2.0) * dz + 20.0
    yc = (np.arange(n) - (n - 1) / 2.0) * px
    z, y, x = np.meshgrid(zc, yc, yc, indexing="ij")
    lab = np.zeros(z.shape, np.uint8)       # 0 air
    body = ((x / 165.0) ** 2 + (y / 120.0) ** 2) <= 1.0
    lab[body] = 1                            # bowel and mesentery fill everything: no fat anywhere
    wall = body & (((x / 150.0) ** 2 + (y / 106.0) ** 2) > 1.0)
    lab[wall] = 2                            # abdominal wall muscle, touching whatever lies inside it
    liver_kind = 3
    if case == "standard":
        liver = _ellipsoid(z, y, x, (-70.0, -8.0, 40.0), (80.0, 95.0, 90.0))
    elif case == "fatty":
        liver = _ellipsoid(z, y, x, (-70.0, -8.0, 40.0), (82.0, 95.0, 92.0))
        liver_kind = 4
    elif case == "cirrhotic":
        liver = _ellipsoid(z, y, x, (-80.0, -20.0, 45.0), (48.0, 60.0, 55.0))
    elif case == "big":
        liver = (_ellipsoid(z, y, x, (-55.0, -5.0, 35.0), (100.0, 100.0, 100.0))
                 | _ellipsoid(z, y, x, (40.0, -45.0, 55.0), (75.0, 40.0, 45.0)))
    else:
        raise ValueError(case)
    liver &= body
    if case == "cirrhotic":
        ascites = body & ~wall & ~_ellipsoid(z, y, x, (-10.0, 15.0, 0.0), (125.0, 80.0, 400.0))
        lab[ascites] = 9
        lab[_ellipsoid(z, y, x, (-80.0, -20.0, 45.0), (58.0, 70.0, 65.0)) & body & ~wall] = 9
        spleen = _ellipsoid(z, y, x, (85.0, 25.0, 20.0), (50.0, 75.0, 85.0))
    elif case == "big":
        spleen = _ellipsoid(z, y, x, (100.0, 40.0, 35.0), (35.0, 50.0, 60.0))
    else:
        spleen = _ellipsoid(z, y, x, (100.0, 45.0, 35.0), (30.0, 45.0, 55.0))
    lab[spleen & body] = 5
    lab[liver] = liver_kind                 # liver last among organs: it touches them all
    kidney = _ellipsoid(z, y, x, (-62.0, 62.0, -25.0), (32.0, 28.0, 55.0))     # against the liver
    lab[kidney & ~liver] = 6
    lab[_ellipsoid(z, y, x, (62.0, 62.0, -35.0), (32.0, 28.0, 55.0))] = 6
    for sx in (-38.0, 38.0):                 # erector spinae, touching the back wall
        lab[_ellipsoid(z, y, x, (sx, 88.0, 0.0), (24.0, 18.0, 999.0)) & body] = 2
    lab[_ellipsoid(z, y, x, (0.0, 52.0, 0.0), (22.0, 19.0, 999.0))] = 7      # vertebral body
    lab[_ellipsoid(z, y, x, (0.0, 82.0, 0.0), (8.0, 12.0, 999.0))] = 7       # arch
    lab[_ellipsoid(z, y, x, (20.0, 18.0, 0.0), (12.0, 12.0, 999.0))] = 8     # aorta
    names = {1: "bowel", 2: "muscle", 3: "liver", 4: "fatty", 5: "spleen", 6: "kidney", 7: "bone", 8: "blood",
             9: "ascites"}
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, lab.shape), (0.5, 3.0, 3.0))
    texture /= texture.std()
    phases = {}
    for phase, hu in HU.items():
        img = np.full(lab.shape, -1000.0, np.float32)
        for k, name in names.items():
            img[lab == k] = hu[name]
        img[lab == 1] += 25.0 * texture[lab == 1]          # bowel content is heterogeneous
        img += rng.normal(0.0, noise, img.shape).astype(np.float32)
        phases[phase] = img
    return Scene(phases, lab == liver_kind, (dz, px, px), lab == 1)

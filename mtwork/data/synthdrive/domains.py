"""SynthDrive visual domains: named presets of camera, palette, lighting, fog and sensor noise.

A domain changes how a scene *looks* and where the camera sits, never which objects are placed:
the scene layout is drawn from the per-image random stream before any domain-dependent draw, so
the same seed gives the same streets in every domain (a pure appearance + camera shift), which is
what the domain-transfer protocols need to measure.

Each preset names the BDD100K frame attributes its frames carry (``weather``, ``timeofday``; the
``scene`` attribute is per image, from the street type), so a SynthDrive domain is also an attribute
domain (``BDD100KDataset(attributes=...)``), the same mechanism as real BDD100K's domains:

    clear_day -> weather "clear", timeofday "daytime"
    dusk_fog  -> weather "foggy", timeofday "dawn/dusk"
    night     -> weather "clear", timeofday "night"

Registered presets (``DOMAINS.names()``):

* ``clear_day``  -- bright neutral daylight, blue sky with clouds, light aerial haze only (fog
  distance 1.5 km), low sensor noise, car-height camera (1.30-1.60 m), horizon at 42-50 % of the
  image height, lamps not glowing.
* ``dusk_fog``   -- dim warm light (brightness 0.55, orange tint), orange-grey sky, dense fog (colour
  blend towards grey with weight 1 - exp(-z / 45 m)), 3x the sensor noise, a higher SUV/van camera
  (1.55-1.95 m) pitched down (horizon at 36-44 %), glowing tail/head lights, traffic lamps and windows,
  a more muted, brownish palette.
* ``night``      -- very dark blue-tinted light (brightness 0.28), black sky, light haze, strong sensor
  noise, glowing lamps and windows; car-height camera.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from mtwork.registry import Registry

RGB = Tuple[float, float, float]

DOMAINS = Registry("synthdrive domain")


@dataclass(frozen=True)
class Domain:
    """Appearance and camera preset of one SynthDrive domain.

    camera_height: (lo, hi) metres above the road, drawn uniformly per image.
    horizon: (lo, hi) horizon row as a fraction of the image height (camera pitch), per image.
    brightness: multiplier on all lit surfaces (1 = daylight); tint: per-channel multiplier.
    sky_top / sky_horizon: sky gradient colours (0..255); clouds: cloud blend strength 0..1.
    fog_colour, fog_distance: colour blended in with weight 1 - exp(-z / fog_distance), z in metres;
    sky_fog: that weight on the sky.
    noise_std: Gaussian sensor noise, 0..255 units.
    lights: 0..1, how much lamps (vehicle lights, traffic lamps, lit windows) glow over the dim light.
    palette: base colours (0..255) of static surfaces; each image picks and jitters among them.
    weather, timeofday: BDD100K frame attribute values written to the det JSON.
    """

    name: str
    weather: str
    timeofday: str
    camera_height: Tuple[float, float]
    horizon: Tuple[float, float]
    brightness: float
    tint: RGB
    sky_top: RGB
    sky_horizon: RGB
    clouds: float
    fog_colour: RGB
    fog_distance: float
    sky_fog: float
    noise_std: float
    lights: float
    palette: Dict[str, Tuple[RGB, ...]] = field(default_factory=dict)


_BASE_PALETTE: Dict[str, Tuple[RGB, ...]] = {
    "road": ((88, 88, 92), (100, 98, 96), (76, 78, 82)),
    "sidewalk": ((150, 146, 140), (168, 160, 150), (135, 135, 138)),
    "curb": ((185, 182, 176),),
    "terrain": ((120, 140, 70), (140, 130, 90), (105, 125, 60)),
    "vegetation": ((60, 105, 40), (45, 90, 45), (80, 115, 45)),
    "building": (
        (150, 120, 100), (170, 165, 150), (120, 110, 105), (190, 170, 140),
        (110, 100, 95), (160, 90, 70), (200, 195, 185), (95, 105, 120),
    ),
    "wall": ((165, 160, 150), (140, 130, 120), (180, 175, 165)),
    "fence": ((120, 115, 105), (90, 95, 90), (150, 140, 120)),
    "pole": ((120, 120, 125), (90, 95, 100)),
    "marking": ((225, 225, 220),),
    "yellow": ((220, 180, 40),),
    "window": ((70, 85, 100),),
}


def _muted(palette: Dict[str, Tuple[RGB, ...]], towards: RGB, amount: float) -> Dict[str, Tuple[RGB, ...]]:
    """Blend every palette colour towards ``towards`` (desaturates a palette for a domain)."""
    return {
        key: tuple(tuple(c * (1 - amount) + t * amount for c, t in zip(rgb, towards)) for rgb in colours)
        for key, colours in palette.items()
    }


@DOMAINS.register("clear_day")
def clear_day() -> Domain:
    return Domain(
        name="clear_day",
        weather="clear",
        timeofday="daytime",
        camera_height=(1.30, 1.60),
        horizon=(0.42, 0.50),
        brightness=1.0,
        tint=(1.0, 1.0, 1.0),
        sky_top=(70, 120, 200),
        sky_horizon=(175, 200, 230),
        clouds=0.5,
        fog_colour=(190, 205, 225),
        fog_distance=1500.0,
        sky_fog=0.0,
        noise_std=2.0,
        lights=0.0,
        palette=dict(_BASE_PALETTE),
    )


@DOMAINS.register("dusk_fog")
def dusk_fog() -> Domain:
    return Domain(
        name="dusk_fog",
        weather="foggy",
        timeofday="dawn/dusk",
        camera_height=(1.55, 1.95),
        horizon=(0.36, 0.44),
        brightness=0.55,
        tint=(1.12, 0.95, 0.80),
        sky_top=(95, 80, 110),
        sky_horizon=(230, 150, 100),
        clouds=0.2,
        fog_colour=(150, 140, 145),
        fog_distance=45.0,
        sky_fog=0.65,
        noise_std=6.0,
        lights=1.0,
        palette=_muted(_BASE_PALETTE, (120, 100, 80), 0.3),
    )


@DOMAINS.register("night")
def night() -> Domain:
    return Domain(
        name="night",
        weather="clear",
        timeofday="night",
        camera_height=(1.30, 1.60),
        horizon=(0.42, 0.50),
        brightness=0.28,
        tint=(0.85, 0.92, 1.15),
        sky_top=(5, 8, 20),
        sky_horizon=(30, 35, 55),
        clouds=0.1,
        fog_colour=(25, 28, 40),
        fog_distance=250.0,
        sky_fog=0.2,
        noise_std=9.0,
        lights=1.0,
        palette=_muted(_BASE_PALETTE, (90, 90, 100), 0.2),
    )


def get_domain(name: str) -> Domain:
    """The preset named ``name``; KeyError listing the known names otherwise."""
    return DOMAINS.create(name)

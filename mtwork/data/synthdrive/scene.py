"""Random SynthDrive scene layouts: camera, road, roadside structures and objects, in metres.

Coordinates: the camera looks along +z (metres ahead, on the ground plane). A point's lateral
*road-frame* coordinate ``r`` (metres) is measured from the road's left kerb, so the road occupies
0 <= r < Road.width (optional parking strips either side of the lanes); the road bends as the camera-frame lateral position of r = 0 is
``-cam_offset + curvature * z**2``. Heights ``y`` are metres above the road.

The layout draws only from the random stream handed in (before any domain-dependent draw except
the camera height and pitch, each taken from one uniform draw), so the same stream gives the same
street in every domain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mtwork.data.synthdrive.domains import Domain


@dataclass
class Camera:
    """Pinhole camera over a flat road. focal/cx/horizon in pixels, height in metres."""

    size: Tuple[int, int]  # (H, W) pixels
    focal: float
    cx: float
    horizon: float  # image row of the horizon (pixels from the top)
    height: float


@dataclass
class Road:
    """The road and its borders in road-frame metres (see module docstring)."""

    scene: str  # BDD100K scene attribute: "city street", "residential" or "highway"
    lanes: int
    lane_width: float
    oncoming: int  # lanes 0..oncoming-1 carry oncoming traffic
    ego_lane: int
    cam_offset: float  # camera's road-frame r at z = 0
    curvature: float  # 1/m; lateral bend = curvature * z**2
    sidewalk: Tuple[float, float]  # (left, right) widths; 0 = none (shoulder of terrain)
    curb: float  # curb width at the road edge (part of the sidewalk), metres
    z_end: float  # distance of the backdrop that closes the view, metres
    dash_period: float
    dash_length: float
    dash_phase: float
    tracks: bool  # darker tyre tracks in each lane
    parking: Tuple[float, float] = (0.0, 0.0)  # (left, right) parking strips: road, not drivable

    @property
    def width(self) -> float:
        """Kerb to kerb: parking strips plus lanes."""
        return self.parking[0] + self.lanes * self.lane_width + self.parking[1]

    def lane_centre(self, lane: float) -> float:
        """Road-frame r of the centre of lane ``lane`` (fractional lanes allowed)."""
        return self.parking[0] + (lane + 0.5) * self.lane_width


@dataclass
class Segment:
    """A stretch [a, b) of a vertical structure: along z for side planes, along r for the backdrop."""

    a: float
    b: float
    kind: str  # "building", "wall", "fence" or "vegetation"
    height: float
    colour: int  # index into the domain palette of that kind
    shade: float  # brightness jitter, multiplier around 1
    window: Tuple[float, float]  # (horizontal spacing, storey height) metres, buildings only


@dataclass
class Plane:
    """A vertical structure parallel to the road at road-frame lateral ``r`` (a side plane)."""

    r: float
    segments: List[Segment]


@dataclass
class Obj:
    """One placed object; ``kind`` selects its drawing in ``render.py``.

    r, z: road-frame position of its ground contact (metres); params: kind-specific sizes/colours.
    """

    kind: str
    r: float
    z: float
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    camera: Camera
    road: Road
    planes: List[Plane]  # roadside structures, any order (the renderer depth-tests them)
    backdrop: List[Segment]  # perpendicular wall of buildings/trees at z = road.z_end
    objects: List[Obj]
    palette_choice: Dict[str, int]  # per surface kind, which palette colour this image uses
    hood: Optional[Dict[str, float]]  # ego-vehicle bonnet at the bottom (ignore in semseg)
    empty: bool  # no traffic participants, lights or signs: the det frame has no labels


def _lerp(span: Tuple[float, float], u: float) -> float:
    return span[0] + (span[1] - span[0]) * u


CAR_COLOURS = (
    (235, 235, 235), (20, 20, 22), (150, 152, 158), (90, 92, 98), (160, 25, 30), (30, 60, 140),
    (25, 90, 60), (210, 200, 170), (200, 120, 30), (110, 20, 40), (60, 120, 180), (240, 200, 40),
)
CLOTHES = (
    (30, 30, 35), (200, 200, 205), (150, 30, 40), (40, 70, 140), (70, 90, 60), (120, 90, 60),
    (220, 180, 60), (90, 50, 120), (180, 100, 140), (60, 60, 70), (230, 110, 50), (100, 140, 170),
)
SKIN = ((240, 200, 170), (200, 150, 110), (150, 100, 70), (95, 65, 45))


def _colour(rng: np.random.Generator, table) -> Tuple[float, float, float]:
    base = np.asarray(table[int(rng.integers(len(table)))], dtype=np.float64)
    return tuple(np.clip(base * rng.uniform(0.85, 1.15) + rng.normal(0, 8, 3), 0, 255))


def _segments(
    rng: np.random.Generator,
    start: float,
    stop: float,
    kinds: Dict[str, float],
    heights: Dict[str, Tuple[float, float]],
    length: Tuple[float, float],
    gap_prob: float,
) -> List[Segment]:
    """Consecutive stretches from ``start`` to ``stop``; kinds drawn with the given weights."""
    names = list(kinds)
    weights = np.asarray([kinds[k] for k in names], dtype=np.float64)
    weights /= weights.sum()
    out: List[Segment] = []
    pos = start
    while pos < stop:
        seg_len = rng.uniform(*length)
        kind = names[int(rng.choice(len(names), p=weights))]
        height = rng.uniform(*heights[kind])
        colour = int(rng.integers(16))
        shade = rng.uniform(0.85, 1.15)
        window = (rng.uniform(2.2, 3.6), rng.uniform(2.8, 3.6))
        if rng.uniform() >= gap_prob:
            out.append(Segment(pos, pos + seg_len, kind, height, colour, shade, window))
        pos += seg_len
    return out


def _spaced(rng: np.random.Generator, n: int, lo: float, hi: float, gap: float) -> List[float]:
    """Up to ``n`` distances in [lo, hi] at least ``gap`` apart (rejection sampling, bounded)."""
    picked: List[float] = []
    for _ in range(n * 4):
        if len(picked) == n:
            break
        z = rng.uniform(lo, hi)
        if all(abs(z - p) >= gap for p in picked):
            picked.append(z)
    return sorted(picked)


def sample_scene(
    rng: np.random.Generator,
    size: Tuple[int, int],
    domain: Domain,
    empty: bool = False,
    trailer: bool = False,
) -> Scene:
    """Draw one scene for an image of ``size`` (H, W).

    empty: no traffic participants, traffic lights or signs (an empty street; the det frame gets no
    "labels" key). trailer: the ego lane holds a truck towing a trailer (an ignore region in detection).
    """
    height_px, width_px = size
    camera = Camera(
        size=(height_px, width_px),
        focal=width_px * rng.uniform(0.80, 0.95),
        cx=width_px * (0.5 + rng.uniform(-0.02, 0.02)),
        horizon=height_px * _lerp(domain.horizon, rng.uniform()),
        height=_lerp(domain.camera_height, rng.uniform()),
    )

    u = rng.uniform()
    scene_type = "city street" if u < 0.5 else ("residential" if u < 0.8 else "highway")
    if scene_type == "city street":
        lanes, lane_w = int(rng.integers(2, 5)), rng.uniform(3.1, 3.6)
        oncoming = lanes // 2
        sidewalk = (rng.uniform(2.5, 5.0), rng.uniform(2.5, 5.0))
    elif scene_type == "residential":
        lanes, lane_w = 2, rng.uniform(2.8, 3.3)
        oncoming = 1
        sidewalk = (rng.uniform(1.5, 3.0), rng.uniform(1.5, 3.0))
    else:
        lanes, lane_w = int(rng.integers(3, 6)), rng.uniform(3.5, 3.8)
        oncoming = 0
        sidewalk = (0.0, 0.0)
    ego = int(rng.integers(oncoming, lanes))
    parking = (0.0, 0.0)
    if scene_type != "highway":
        parking = tuple(rng.uniform(2.1, 2.5) if rng.uniform() < 0.55 else 0.0 for _ in range(2))
    road = Road(
        scene=scene_type,
        lanes=lanes,
        lane_width=lane_w,
        oncoming=oncoming,
        ego_lane=ego,
        cam_offset=parking[0] + (ego + 0.5) * lane_w + rng.uniform(-0.35, 0.35),
        curvature=0.0 if rng.uniform() < 0.4 else rng.uniform(-0.0018, 0.0018),
        sidewalk=sidewalk,
        curb=0.25 if scene_type != "highway" else 0.0,
        z_end=rng.uniform(70.0, 140.0),
        dash_period=rng.uniform(8.0, 12.0),
        dash_length=rng.uniform(2.5, 4.0),
        dash_phase=rng.uniform(0.0, 12.0),
        tracks=bool(rng.uniform() < 0.6),
        parking=parking,
    )
    planes = _sample_planes(rng, road)
    backdrop = _segments(
        rng, -160.0, 170.0,
        {"building": 0.6 if scene_type != "highway" else 0.25, "vegetation": 0.4},
        {"building": (8.0, 35.0), "vegetation": (5.0, 14.0)},
        (6.0, 24.0), gap_prob=0.0,
    )
    palette_choice = {k: int(rng.integers(16)) for k in ("road", "sidewalk", "terrain", "vegetation", "wall", "fence", "pole")}
    hood = None
    if rng.uniform() < 0.6:
        hood = {"top": rng.uniform(0.06, 0.11), "bulge": rng.uniform(0.02, 0.05), "grey": rng.uniform(30, 160)}
    objects = _sample_objects(rng, road, empty=empty, trailer=trailer)
    return Scene(
        camera=camera,
        road=road,
        planes=planes,
        backdrop=backdrop,
        objects=objects,
        palette_choice=palette_choice,
        hood=hood,
        empty=empty,
    )


def _sample_planes(rng: np.random.Generator, road: Road) -> List[Plane]:
    """A low near layer (fences, walls, hedges) and a far layer (buildings, trees) on each side."""
    planes: List[Plane] = []
    for side in (-1, 1):
        walk = road.sidewalk[0] if side < 0 else road.sidewalk[1]
        edge = 0.0 if side < 0 else road.width
        if road.scene == "highway":
            near_r = edge + side * rng.uniform(1.0, 3.0)
            near = _segments(rng, 0.0, road.z_end, {"wall": 0.5, "fence": 0.5},
                             {"wall": (0.7, 1.1), "fence": (1.5, 2.2)}, (30.0, 80.0), gap_prob=0.3)
            far_gap = rng.uniform(8.0, 30.0)
            far = _segments(rng, 0.0, road.z_end, {"vegetation": 0.7, "building": 0.3},
                            {"vegetation": (4.0, 12.0), "building": (6.0, 15.0)}, (15.0, 40.0), gap_prob=0.35)
        else:
            near_r = edge + side * (walk + 0.05)
            near = _segments(rng, 0.0, road.z_end, {"wall": 0.35, "fence": 0.4, "vegetation": 0.25},
                             {"wall": (0.8, 2.2), "fence": (1.0, 2.0), "vegetation": (0.8, 1.8)},
                             (5.0, 20.0), gap_prob=0.6 if road.scene == "city street" else 0.4)
            far_gap = rng.uniform(0.1, 2.0) if road.scene == "city street" else rng.uniform(3.0, 10.0)
            kinds = {"building": 0.85, "vegetation": 0.15} if road.scene == "city street" else {"building": 0.5, "vegetation": 0.5}
            heights = {"building": (9.0, 30.0), "vegetation": (3.0, 9.0)} if road.scene == "city street" else {"building": (5.0, 10.0), "vegetation": (3.0, 8.0)}
            far = _segments(rng, 0.0, road.z_end, kinds, heights, (8.0, 28.0),
                            gap_prob=0.1 if road.scene == "city street" else 0.3)
        planes.append(Plane(near_r, near))
        planes.append(Plane(near_r + side * far_gap, far))
    return planes


def _vehicle(rng: np.random.Generator, kind: str, r: float, z: float, oncoming: bool) -> Obj:
    params: Dict[str, Any] = {"oncoming": oncoming, "colour": _colour(rng, CAR_COLOURS)}
    if kind == "car":
        style = int(rng.choice(3, p=(0.6, 0.3, 0.1)))  # sedan, SUV, van
        params.update(
            style=style,
            width=rng.uniform(1.65, 1.9) + 0.1 * style,
            height=(rng.uniform(1.35, 1.55), rng.uniform(1.65, 1.85), rng.uniform(1.9, 2.2))[style],
        )
    elif kind == "truck":
        params.update(width=rng.uniform(2.3, 2.55), height=rng.uniform(3.0, 3.9),
                      cab_colour=_colour(rng, CAR_COLOURS))
    elif kind == "bus":
        params.update(width=rng.uniform(2.45, 2.6), height=rng.uniform(2.9, 3.4),
                      colour=_colour(rng, ((220, 180, 30), (200, 40, 40), (40, 90, 170), (230, 230, 225), (40, 140, 80))))
    elif kind == "train":
        params.update(width=rng.uniform(2.5, 2.7), height=rng.uniform(3.4, 3.8),
                      colour=_colour(rng, ((230, 230, 225), (200, 40, 40), (240, 200, 40), (40, 90, 170))))
    elif kind in ("motorcycle", "bicycle"):
        params.update(rider=True, facing=float(rng.choice((-1.0, 1.0))),
                      clothes=_colour(rng, CLOTHES), pants=_colour(rng, CLOTHES), skin=_colour(rng, SKIN),
                      helmet=_colour(rng, CAR_COLOURS), length=rng.uniform(1.6, 1.8) if kind == "bicycle" else rng.uniform(1.9, 2.2))
    return Obj(kind, r, z, params)


def _pedestrian(rng: np.random.Generator, r: float, z: float) -> Obj:
    return Obj("pedestrian", r, z, {
        "height": rng.uniform(1.5, 1.95), "stride": rng.uniform(-0.3, 0.3), "clothes": _colour(rng, CLOTHES),
        "pants": _colour(rng, CLOTHES), "skin": _colour(rng, SKIN), "hair": _colour(rng, ((30, 25, 20), (90, 60, 30), (180, 150, 90), (120, 120, 120))),
        "bag": bool(rng.uniform() < 0.3), "bag_colour": _colour(rng, CLOTHES),
    })


def _sample_objects(rng: np.random.Generator, road: Road, empty: bool, trailer: bool) -> List[Obj]:
    objs: List[Obj] = []
    city = road.scene == "city street"
    z_max = min(road.z_end - 5.0, 90.0)

    # Static street furniture: lamp poles and trees (present even in empty streets).
    if road.scene != "highway":
        for side in (-1, 1):
            walk = road.sidewalk[0] if side < 0 else road.sidewalk[1]
            edge = 0.0 if side < 0 else road.width
            if rng.uniform() < 0.8:
                spacing = rng.uniform(18.0, 32.0)
                z = rng.uniform(4.0, spacing)
                while z < z_max:
                    objs.append(Obj("pole", edge + side * 0.45, z, {"height": rng.uniform(6.0, 9.0), "side": side}))
                    z += spacing
            if rng.uniform() < (0.4 if city else 0.7):
                spacing = rng.uniform(8.0, 20.0)
                z = rng.uniform(3.0, spacing)
                while z < z_max:
                    objs.append(Obj("tree", edge + side * max(walk - 0.7, 0.6), z + rng.uniform(-1, 1), {
                        "height": rng.uniform(4.5, 8.0), "crown": rng.uniform(1.2, 2.4),
                        "green": int(rng.integers(16)), "lobes": rng.uniform(-1, 1, size=(4, 3)).tolist(),
                    }))
                    z += spacing
    elif rng.uniform() < 0.6:
        spacing = rng.uniform(35.0, 50.0)
        z = rng.uniform(5.0, spacing)
        while z < z_max:
            objs.append(Obj("pole", road.width + 1.2, z, {"height": rng.uniform(8.0, 10.0), "side": 1}))
            z += spacing
    if empty:
        return objs

    # Traffic: vehicles per lane, never closer than 8 m in the ego lane (that is our own car).
    ego_front = 8.0
    if trailer:
        truck_z = rng.uniform(12.0, 20.0)
        r = road.lane_centre(road.ego_lane) + rng.uniform(-0.2, 0.2)
        objs.append(_vehicle(rng, "truck", r, truck_z, oncoming=False))
        trail = Obj("trailer", r + rng.uniform(-0.15, 0.15), truck_z - rng.uniform(4.5, 6.5), {
            "width": rng.uniform(2.0, 2.35), "height": rng.uniform(1.7, 2.4),
            "colour": _colour(rng, ((200, 200, 195), (120, 90, 60), (90, 95, 100), (60, 90, 140))),
        })
        objs.append(trail)
        ego_front = truck_z + 10.0
    per_lane = 2.5 if road.scene == "highway" else (1.8 if city else 1.0)
    kinds = ("car", "truck", "bus", "motorcycle", "bicycle", "train")
    for lane in range(road.lanes):
        oncoming = lane < road.oncoming
        lo = ego_front if lane == road.ego_lane else 5.0
        n = int(rng.poisson(per_lane))
        for z in _spaced(rng, n, lo, z_max, 10.0):
            if road.scene == "highway":
                p = (0.68, 0.22, 0.05, 0.05, 0.0, 0.0)
            elif city:
                p = (0.66, 0.10, 0.10, 0.06, 0.05, 0.03)
            else:
                p = (0.80, 0.06, 0.02, 0.06, 0.06, 0.0)
            kind = kinds[int(rng.choice(len(kinds), p=p))]
            r = road.lane_centre(lane) + rng.uniform(-0.35, 0.35)
            if kind == "bicycle":  # cyclists keep to the lane's outer edge
                r = road.lane_centre(lane + (-0.35 if oncoming else 0.35))
            objs.append(_vehicle(rng, kind, r, z, oncoming))
    # Parked cars fill the parking strips, nose to tail with gaps.
    for side, strip in ((-1, road.parking[0]), (1, road.parking[1])):
        if strip <= 0:
            continue
        r = strip / 2 if side < 0 else road.width - strip / 2
        z = rng.uniform(3.0, 9.0)
        while z < z_max:
            if rng.uniform() < 0.7:
                kind = "car" if rng.uniform() < 0.92 else "truck"
                objs.append(_vehicle(rng, kind, r + rng.uniform(-0.15, 0.15), z, oncoming=side < 0 and road.oncoming > 0))
            z += rng.uniform(5.5, 8.5)

    if road.scene != "highway":
        n_ped = int(rng.integers(0, 9 if city else 4))
        for _ in range(n_ped):
            side = -1 if rng.uniform() < 0.5 else 1
            walk = road.sidewalk[0] if side < 0 else road.sidewalk[1]
            edge = 0.0 if side < 0 else road.width
            r = edge + side * rng.uniform(0.5, max(walk - 0.2, 0.6))
            objs.append(_pedestrian(rng, r, rng.uniform(4.0, min(z_max, 60.0))))
        if rng.uniform() < 0.15:  # someone crossing the street
            objs.append(_pedestrian(rng, rng.uniform(0.5, road.width - 0.5), rng.uniform(9.0, 30.0)))
        if rng.uniform() < 0.25:  # a parked bicycle or motorcycle on the sidewalk, no rider
            kind = "bicycle" if rng.uniform() < 0.6 else "motorcycle"
            side = -1 if rng.uniform() < 0.5 else 1
            edge = 0.0 if side < 0 else road.width
            obj = _vehicle(rng, kind, edge + side * 1.0, rng.uniform(6.0, 35.0), oncoming=False)
            obj.params["rider"] = False
            objs.append(obj)

    # Traffic lights: on a roadside pole, or hanging from a mast arm over the lanes.
    n_lights = int(rng.integers(0, 4)) if city else (int(rng.integers(0, 2)) if road.scene == "residential" else 0)
    for z in _spaced(rng, n_lights, 12.0, min(z_max, 70.0), 6.0):
        side = -1 if rng.uniform() < 0.5 else 1
        edge = 0.0 if side < 0 else road.width
        objs.append(Obj("traffic light", edge + side * 0.5, z, {
            "pole_height": rng.uniform(3.2, 5.0), "arm": rng.uniform(2.5, 6.0) if rng.uniform() < 0.5 else 0.0,
            "side": side, "state": int(rng.integers(3)),
        }))
    n_signs = int(rng.integers(0, 5))
    for z in _spaced(rng, n_signs, 6.0, min(z_max, 70.0), 5.0):
        side = -1 if rng.uniform() < 0.4 else 1
        edge = 0.0 if side < 0 else road.width
        offset = 0.6 if road.scene != "highway" else rng.uniform(1.0, 2.0)
        objs.append(Obj("traffic sign", edge + side * offset, z, {
            "pole_height": rng.uniform(2.0, 2.8), "plate": rng.uniform(0.6, 0.9),
            "shape": int(rng.integers(5)), "back": bool(rng.uniform() < 0.15),
        }))
    return objs

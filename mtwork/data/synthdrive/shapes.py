"""Object drawings for SynthDrive: each kind as 2D primitives in metres on a camera-facing billboard.

A drawing is (primitives, parts, slots):

* primitive: ("rect", x0, y0, x1, y1, part) | ("poly", [(x, y), ...], part)
  | ("ellipse", cx, cy, rx, ry, part) | ("ring", cx, cy, r, thickness, part)
  | ("line", [(x, y), ...], thickness, part);
  x metres to the right of the object's ground contact point, y metres above the road.
  Later primitives cover earlier ones.
* part (1-based index into ``parts``): Part(semseg train id, slot, RGB 0..255, emissive).
* slot: index into ``slots`` = the labelled instances of the drawing, (det category, attributes);
  slot -1 = not a detection instance (poles, trees, a traffic light's pole).

Keeping the shapes apart from the rasteriser lets a reader find "what does a bus look like" here.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Tuple

from mtwork.data.bdd100k import IGNORE_INDEX, SEMSEG_INDEX

RGB = Tuple[float, float, float]


class Part(NamedTuple):
    semseg: int
    slot: int
    rgb: RGB
    emissive: bool = False


Drawing = Tuple[List[tuple], List[Part], List[Tuple[str, Dict[str, Any]]]]

TYRE: RGB = (28, 28, 30)
GLASS: RGB = (38, 48, 60)
DARK: RGB = (45, 45, 48)
RED_LAMP: RGB = (235, 30, 25)
WHITE_LAMP: RGB = (245, 240, 215)
POLE_GREY: RGB = (125, 125, 130)


def _scale(rgb: RGB, k: float) -> RGB:
    return tuple(min(255.0, c * k) for c in rgb)


class _Builder:
    """Accumulates primitives and parts; ``part()`` returns the code to draw a primitive with."""

    def __init__(self) -> None:
        self.prims: List[tuple] = []
        self.parts: List[Part] = []
        self.slots: List[Tuple[str, Dict[str, Any]]] = []

    def part(self, semseg: int, slot: int, rgb: RGB, emissive: bool = False) -> int:
        self.parts.append(Part(semseg, slot, tuple(float(c) for c in rgb), emissive))
        return len(self.parts)

    def slot(self, category: str, **attributes: Any) -> int:
        self.slots.append((category, attributes))
        return len(self.slots) - 1

    def rect(self, x0: float, y0: float, x1: float, y1: float, code: int) -> None:
        self.prims.append(("rect", x0, y0, x1, y1, code))

    def poly(self, points: List[Tuple[float, float]], code: int) -> None:
        self.prims.append(("poly", points, code))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, code: int) -> None:
        self.prims.append(("ellipse", cx, cy, rx, ry, code))

    def ring(self, cx: float, cy: float, r: float, thickness: float, code: int) -> None:
        self.prims.append(("ring", cx, cy, r, thickness, code))

    def line(self, points: List[Tuple[float, float]], thickness: float, code: int) -> None:
        self.prims.append(("line", points, thickness, code))

    def done(self) -> Drawing:
        return self.prims, self.parts, self.slots


def car(p: Dict[str, Any]) -> Drawing:
    b = _Builder()
    sem, s = SEMSEG_INDEX["car"], b.slot("car")
    w, h, c, style = p["width"], p["height"], p["colour"], p["style"]
    half = w / 2
    body, tyre = b.part(sem, s, c), b.part(sem, s, TYRE)
    glass, bumper = b.part(sem, s, GLASS), b.part(sem, s, _scale(c, 0.55))
    belt = h * (0.55, 0.5, 0.45)[style]
    top = (0.72, 0.82, 0.92)[style]
    b.rect(-half + 0.08, 0.0, -half + 0.42, 0.42, tyre)
    b.rect(half - 0.42, 0.0, half - 0.08, 0.42, tyre)
    b.rect(-half, 0.2, half, belt, body)
    b.poly([(-half * 0.96, belt), (half * 0.96, belt), (half * top, h), (-half * top, h)], body)
    glass_top = h - 0.07 if style < 2 else h - 0.25
    b.poly([(-half * 0.96 + 0.13, belt + 0.06), (half * 0.96 - 0.13, belt + 0.06),
            (half * top - 0.1, glass_top), (-half * top + 0.1, glass_top)], glass)
    b.rect(-half, 0.2, half, 0.33, bumper)
    plate = b.part(sem, s, (222, 222, 212))
    if p["oncoming"]:
        lamp = b.part(sem, s, WHITE_LAMP, emissive=True)
        grille = b.part(sem, s, DARK)
        b.rect(-0.4, 0.42, 0.4, belt - 0.1, grille)
        b.rect(-half + 0.08, belt - 0.2, -half + 0.42, belt - 0.06, lamp)
        b.rect(half - 0.42, belt - 0.2, half - 0.08, belt - 0.06, lamp)
    else:
        lamp = b.part(sem, s, RED_LAMP, emissive=True)
        b.rect(-half + 0.05, belt - 0.22, -half + 0.36, belt - 0.07, lamp)
        b.rect(half - 0.36, belt - 0.22, half - 0.05, belt - 0.07, lamp)
    b.rect(-0.26, 0.36, 0.26, 0.48, plate)
    return b.done()


def truck(p: Dict[str, Any]) -> Drawing:
    b = _Builder()
    sem, s = SEMSEG_INDEX["truck"], b.slot("truck")
    w, h, c = p["width"], p["height"], p["colour"]
    half = w / 2
    tyre, dark = b.part(sem, s, TYRE), b.part(sem, s, DARK)
    box = b.part(sem, s, c)
    if p["oncoming"]:
        cab, glass = b.part(sem, s, p["cab_colour"]), b.part(sem, s, GLASS)
        lamp = b.part(sem, s, WHITE_LAMP, emissive=True)
        cab_top = min(2.9, h - 0.25)
        b.rect(-half, 2.2, half, h, box)
        b.rect(-half + 0.05, 0.45, half - 0.05, cab_top, cab)
        b.rect(-half + 0.2, 1.7, half - 0.2, cab_top - 0.12, glass)
        b.rect(-0.6, 0.65, 0.6, 1.35, dark)
        b.rect(-half + 0.15, 0.7, -half + 0.5, 0.9, lamp)
        b.rect(half - 0.5, 0.7, half - 0.15, 0.9, lamp)
        b.rect(-half + 0.1, 0.0, -half + 0.55, 0.55, tyre)
        b.rect(half - 0.55, 0.0, half - 0.1, 0.55, tyre)
    else:
        seam, bar = b.part(sem, s, _scale(c, 0.6)), b.part(sem, s, _scale(c, 0.75))
        lamp = b.part(sem, s, RED_LAMP, emissive=True)
        b.rect(-half + 0.05, 0.0, -half + 0.7, 0.95, tyre)
        b.rect(half - 0.7, 0.0, half - 0.05, 0.95, tyre)
        b.rect(-half + 0.1, 0.55, half - 0.1, 0.95, dark)
        b.rect(-half, 0.95, half, h, box)
        b.rect(-0.025, 1.0, 0.025, h - 0.05, seam)
        b.rect(-half + 0.05, 1.35, half - 0.05, 1.42, bar)
        b.rect(-half + 0.05, h - 0.45, half - 0.05, h - 0.38, bar)
        b.rect(-half + 0.12, 0.62, -half + 0.42, 0.82, lamp)
        b.rect(half - 0.42, 0.62, half - 0.12, 0.82, lamp)
    return b.done()


def bus(p: Dict[str, Any]) -> Drawing:
    b = _Builder()
    sem, s = SEMSEG_INDEX["bus"], b.slot("bus")
    w, h, c = p["width"], p["height"], p["colour"]
    half = w / 2
    body, tyre, glass = b.part(sem, s, c), b.part(sem, s, TYRE), b.part(sem, s, GLASS)
    display = b.part(sem, s, (250, 160, 30), emissive=True)
    b.rect(-half + 0.1, 0.0, -half + 0.6, 0.55, tyre)
    b.rect(half - 0.6, 0.0, half - 0.1, 0.55, tyre)
    b.rect(-half, 0.3, half, h, body)
    if p["oncoming"]:
        lamp = b.part(sem, s, WHITE_LAMP, emissive=True)
        b.rect(-half + 0.12, h * 0.38, half - 0.12, h - 0.36, glass)
        b.rect(-half + 0.25, h - 0.3, half - 0.25, h - 0.08, display)
        b.rect(-half + 0.1, 0.55, -half + 0.45, 0.75, lamp)
        b.rect(half - 0.45, 0.55, half - 0.1, 0.75, lamp)
    else:
        lamp, grille = b.part(sem, s, RED_LAMP, emissive=True), b.part(sem, s, _scale(c, 0.55))
        b.rect(-half + 0.2, h * 0.55, half - 0.2, h - 0.3, glass)
        b.rect(-0.7, 0.5, 0.7, 0.95, grille)
        b.rect(-0.3, h - 0.25, 0.3, h - 0.06, display)
        b.rect(-half + 0.08, 0.7, -half + 0.3, 1.15, lamp)
        b.rect(half - 0.3, 0.7, half - 0.08, 1.15, lamp)
    return b.done()


def train(p: Dict[str, Any]) -> Drawing:
    b = _Builder()
    sem, s = SEMSEG_INDEX["train"], b.slot("train")
    w, h, c = p["width"], p["height"], p["colour"]
    half = w / 2
    body, skirt, glass = b.part(sem, s, c), b.part(sem, s, DARK), b.part(sem, s, GLASS)
    stripe = b.part(sem, s, _scale(c, 0.5))
    lamp = b.part(sem, s, WHITE_LAMP if p["oncoming"] else RED_LAMP, emissive=True)
    b.line([(-0.55, h), (0.0, h + 0.8), (0.55, h)], 0.06, skirt)  # pantograph
    b.line([(-0.65, h + 0.8), (0.65, h + 0.8)], 0.06, skirt)
    b.rect(-half, 0.0, half, 0.35, skirt)
    b.poly([(-half, 0.35), (half, 0.35), (half * 0.94, h), (-half * 0.94, h)], body)
    b.rect(-half, h * 0.3, half, h * 0.37, stripe)
    b.rect(-half + 0.18, h * 0.45, half - 0.18, h - 0.3, glass)
    b.rect(-half + 0.15, 0.55, -half + 0.45, 0.75, lamp)
    b.rect(half - 0.45, 0.55, half - 0.15, 0.75, lamp)
    return b.done()


def trailer(p: Dict[str, Any]) -> Drawing:
    """A box trailer; "trailer" in the det JSON, ignore (255) in semseg as in Cityscapes."""
    b = _Builder()
    sem, s = IGNORE_INDEX, b.slot("trailer")
    w, h, c = p["width"], p["height"], p["colour"]
    half = w / 2
    tyre, body, frame = b.part(sem, s, TYRE), b.part(sem, s, c), b.part(sem, s, DARK)
    lamp = b.part(sem, s, RED_LAMP, emissive=True)
    b.rect(-half + 0.1, 0.0, -half + 0.55, 0.6, tyre)
    b.rect(half - 0.55, 0.0, half - 0.1, 0.6, tyre)
    b.rect(-half, 0.5, half, h, body)
    b.rect(-half, 0.45, half, 0.62, frame)
    b.rect(-half + 0.05, 0.5, -half + 0.3, 0.6, lamp)
    b.rect(half - 0.3, 0.5, half - 0.05, 0.6, lamp)
    return b.done()


def _rider(b: _Builder, p: Dict[str, Any], hip: Tuple[float, float], lean: float,
           hands: Tuple[float, float], feet: List[Tuple[float, float]], helmet: bool) -> None:
    f = p["facing"]
    sem, s = SEMSEG_INDEX["rider"], b.slot("rider")
    shirt, pants = b.part(sem, s, p["clothes"]), b.part(sem, s, p["pants"])
    skin, hat = b.part(sem, s, p["skin"]), b.part(sem, s, p["helmet"] if helmet else (35, 28, 22))
    shoulder = (hip[0] + f * lean, hip[1] + 0.55)
    for foot in feet:
        knee = (hip[0] + f * 0.3, hip[1] - 0.12)
        b.line([hip, knee, foot], 0.13, pants)
    b.line([hip, shoulder], 0.3, shirt)
    b.line([shoulder, hands], 0.09, shirt)
    head = (shoulder[0] + f * 0.06, shoulder[1] + 0.19)
    b.ellipse(head[0], head[1], 0.11, 0.12, skin)
    if helmet:
        b.ellipse(head[0] - f * 0.01, head[1] + 0.01, 0.14, 0.14, hat)
    else:
        b.ellipse(head[0], head[1] + 0.05, 0.11, 0.08, hat)


def bicycle(p: Dict[str, Any]) -> Drawing:
    """Side view; with ``rider`` a person sits on it (two instances: bicycle + rider)."""
    b = _Builder()
    sem, s = SEMSEG_INDEX["bicycle"], b.slot("bicycle")
    f, length = p["facing"], p["length"]
    rw = 0.34
    xw = length / 2 - rw
    tyre, frame = b.part(sem, s, TYRE), b.part(sem, s, p["colour"])
    rear, front = (-f * xw, rw), (f * xw, rw)
    crank = (-f * 0.05, rw)
    seat = (-f * 0.25, rw + 0.55)
    head = (f * (xw - 0.15), rw + 0.62)
    bar = (f * (xw - 0.3), rw + 0.78)
    b.ring(rear[0], rear[1], rw, 0.05, tyre)
    b.ring(front[0], front[1], rw, 0.05, tyre)
    b.line([rear, crank, seat, rear], 0.045, frame)
    b.line([seat, head, crank], 0.045, frame)
    b.line([head, front], 0.045, frame)
    b.line([head, bar], 0.04, tyre)
    b.rect(seat[0] - 0.12, seat[1], seat[0] + 0.12, seat[1] + 0.06, tyre)
    if p.get("rider"):
        _rider(b, p, hip=(seat[0], seat[1] + 0.08), lean=0.25, hands=bar,
               feet=[(crank[0] + f * 0.15, crank[1] + 0.05), (crank[0] - f * 0.12, crank[1] - 0.1)],
               helmet=False)
    return b.done()


def motorcycle(p: Dict[str, Any]) -> Drawing:
    """Side view; with ``rider`` a helmeted person sits on it (two instances)."""
    b = _Builder()
    sem, s = SEMSEG_INDEX["motorcycle"], b.slot("motorcycle")
    f, length = p["facing"], p["length"]
    rw = 0.32
    xw = length / 2 - rw
    tyre, hub = b.part(sem, s, TYRE), b.part(sem, s, (150, 150, 155))
    body, seat = b.part(sem, s, p["colour"]), b.part(sem, s, DARK)
    lamp = b.part(sem, s, RED_LAMP, emissive=True)
    for x in (-f * xw, f * xw):
        b.ellipse(x, rw, rw, rw, tyre)
        b.ellipse(x, rw, rw * 0.45, rw * 0.45, hub)
    b.poly([(-f * (xw + 0.1), 0.6), (-f * 0.2, 0.42), (f * 0.45, 0.5), (f * (xw + 0.05), 0.92),
            (f * 0.25, 0.98), (-f * 0.45, 0.86)], body)
    b.poly([(-f * (xw + 0.05), 0.86), (-f * 0.1, 0.88), (-f * 0.1, 0.98), (-f * (xw - 0.1), 0.97)], seat)
    bar = (f * (xw - 0.05), 1.12)
    b.line([(f * (xw + 0.05), 0.55), bar], 0.06, seat)
    b.rect(-f * (xw + 0.12) - 0.06, 0.66, -f * (xw + 0.12) + 0.06, 0.76, lamp)
    if p.get("rider"):
        _rider(b, p, hip=(-f * 0.2, 1.0), lean=0.32, hands=bar,
               feet=[(f * 0.1, 0.45)], helmet=True)
    return b.done()


def pedestrian(p: Dict[str, Any]) -> Drawing:
    b = _Builder()
    sem, s = SEMSEG_INDEX["person"], b.slot("pedestrian")
    h, stride = p["height"], p["stride"]
    shirt, pants = b.part(sem, s, p["clothes"]), b.part(sem, s, p["pants"])
    skin, hair, shoe = b.part(sem, s, p["skin"]), b.part(sem, s, p["hair"]), b.part(sem, s, (30, 28, 26))
    hip = 0.5 * h
    for side, swing in ((-1, stride), (1, -stride)):
        foot = (side * 0.08 + swing * 0.5, 0.04)
        b.line([(side * 0.08, hip), foot], 0.13, pants)
        b.rect(foot[0] - 0.07, 0.0, foot[0] + 0.09, 0.07, shoe)
    if p.get("bag"):
        bag = b.part(sem, s, p["bag_colour"])
        b.rect(0.17, 0.45 * h, 0.33, 0.62 * h, bag)
    b.poly([(-0.2, 0.82 * h), (0.2, 0.82 * h), (0.16, 0.47 * h), (-0.16, 0.47 * h)], shirt)
    for side, swing in ((-1, -stride), (1, stride)):
        hand = (side * 0.25 + swing * 0.3, 0.47 * h)
        b.line([(side * 0.19, 0.8 * h), hand], 0.08, shirt)
        b.ellipse(hand[0], hand[1], 0.045, 0.05, skin)
    b.rect(-0.05, 0.82 * h, 0.05, 0.86 * h, skin)
    b.ellipse(0.0, 0.925 * h, 0.1, 0.12 * h / 1.7, skin)
    b.ellipse(0.0, 0.95 * h, 0.105, 0.08 * h / 1.7, hair)
    return b.done()


_LIGHT_STATES = (("R", (255, 45, 30)), ("Y", (255, 190, 30)), ("G", (40, 255, 130)))


def traffic_light(p: Dict[str, Any]) -> Drawing:
    """A three-lamp light on a roadside pole, or hanging from a mast arm over the road."""
    b = _Builder()
    code, lit_rgb = _LIGHT_STATES[p["state"]]
    s = b.slot("traffic light", trafficLightColor=code)
    sem = SEMSEG_INDEX["traffic light"]
    pole = b.part(SEMSEG_INDEX["pole"], -1, POLE_GREY)
    housing = b.part(sem, s, (34, 34, 36))
    dim, lit = b.part(sem, s, (55, 55, 55)), b.part(sem, s, lit_rgb, emissive=True)
    hp = p["pole_height"]
    b.rect(-0.07, 0.0, 0.07, hp, pole)
    if p["arm"] > 0:
        xb = -p["side"] * p["arm"]
        b.line([(0.0, hp - 0.1), (xb, hp - 0.1)], 0.1, pole)
        top = hp - 0.15
    else:
        xb, top = 0.0, hp + 0.95
    b.rect(xb - 0.18, top - 0.95, xb + 0.18, top, housing)
    for i in range(3):
        b.ellipse(xb, top - 0.17 - 0.3 * i, 0.1, 0.1, lit if i == p["state"] else dim)
    return b.done()


def traffic_sign(p: Dict[str, Any]) -> Drawing:
    b = _Builder()
    s = b.slot("traffic sign")
    sem = SEMSEG_INDEX["traffic sign"]
    pole = b.part(SEMSEG_INDEX["pole"], -1, POLE_GREY)
    hp, size = p["pole_height"], p["plate"]
    r = size / 2
    cy = hp + r
    b.rect(-0.04, 0.0, 0.04, hp + 0.1, pole)
    shape = p["shape"]
    if p["back"]:
        back = b.part(sem, s, (135, 135, 138))
        if shape in (1,):
            b.poly([(-r, cy - r * 0.8), (r, cy - r * 0.8), (0.0, cy + r * 0.9)], back)
        elif shape == 0:
            b.ellipse(0.0, cy, r, r, back)
        else:
            b.rect(-r, cy - r, r, cy + r, back)
        return b.done()
    red, white = b.part(sem, s, (205, 30, 30)), b.part(sem, s, (238, 238, 236))
    if shape == 0:  # prohibition: red ring
        b.ellipse(0.0, cy, r, r, red)
        b.ellipse(0.0, cy, r * 0.72, r * 0.72, white)
    elif shape == 1:  # warning: red triangle
        b.poly([(-r, cy - r * 0.8), (r, cy - r * 0.8), (0.0, cy + r * 0.9)], red)
        b.poly([(-r * 0.62, cy - r * 0.58), (r * 0.62, cy - r * 0.58), (0.0, cy + r * 0.5)], white)
    elif shape == 2:  # mandatory: blue disc with arrow
        blue = b.part(sem, s, (30, 80, 175))
        b.ellipse(0.0, cy, r, r, blue)
        b.poly([(-0.08 * size, cy - r * 0.6), (0.08 * size, cy - r * 0.6), (0.08 * size, cy),
                (0.22 * size, cy), (0.0, cy + r * 0.65), (-0.22 * size, cy), (-0.08 * size, cy)], white)
    elif shape == 3:  # stop: red octagon, white band
        k = r * 0.414
        b.poly([(-k, cy - r), (k, cy - r), (r, cy - k), (r, cy + k), (k, cy + r), (-k, cy + r),
                (-r, cy + k), (-r, cy - k)], red)
        b.rect(-r * 0.7, cy - r * 0.18, r * 0.7, cy + r * 0.18, white)
    else:  # direction board: green rectangle, white border
        green = b.part(sem, s, (20, 110, 60))
        b.rect(-r * 1.4, cy - r * 0.7, r * 1.4, cy + r * 0.7, white)
        b.rect(-r * 1.3, cy - r * 0.6, r * 1.3, cy + r * 0.6, green)
    return b.done()


def pole(p: Dict[str, Any]) -> Drawing:
    """A street lamp: pole, arm over the road and lamp head (all semseg "pole", not detected)."""
    b = _Builder()
    sem = SEMSEG_INDEX["pole"]
    grey = b.part(sem, -1, POLE_GREY)
    lamp = b.part(sem, -1, (255, 230, 170), emissive=True)
    h, d = p["height"], -p["side"]
    b.rect(-0.09, 0.0, 0.09, h, grey)
    b.line([(0.0, h - 0.25), (d * 0.8, h + 0.05), (d * 1.7, h)], 0.08, grey)
    b.rect(min(d * 1.4, d * 2.0), h - 0.15, max(d * 1.4, d * 2.0), h, lamp)
    return b.done()


def tree(p: Dict[str, Any], greens: Tuple[RGB, ...]) -> Drawing:
    b = _Builder()
    sem = SEMSEG_INDEX["vegetation"]
    trunk = b.part(sem, -1, (88, 66, 46))
    base = greens[p["green"] % len(greens)]
    h, crown = p["height"], p["crown"]
    b.rect(-0.13, 0.0, 0.13, h * 0.6, trunk)
    for i, (lx, ly, lz) in enumerate(p["lobes"]):
        leaf = b.part(sem, -1, _scale(base, 0.85 + 0.1 * i))
        rad = crown * (0.7 + 0.2 * lz)
        b.ellipse(lx * crown * 0.6, h - crown + ly * crown * 0.35, rad, rad * 0.9, leaf)
    return b.done()


#: kind -> drawing function of the object's params (the tree also needs the domain's greens).
DRAWERS: Dict[str, Callable[..., Drawing]] = {
    "car": car,
    "truck": truck,
    "bus": bus,
    "train": train,
    "trailer": trailer,
    "bicycle": bicycle,
    "motorcycle": motorcycle,
    "pedestrian": pedestrian,
    "traffic light": traffic_light,
    "traffic sign": traffic_sign,
    "pole": pole,
    "tree": tree,
}

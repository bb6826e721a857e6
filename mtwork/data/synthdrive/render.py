"""Rasterise a SynthDrive scene into an image and its label maps.

Order of drawing (each step may cover the previous ones):
1. sky gradient + clouds (depth 0 = invalid);
2. ground plane row by row (z = focal * camera_height / (row - horizon)): road, lane markings,
   curbs, sidewalks, terrain; the lane index of each road pixel gives the drivable map;
3. vertical structures (backdrop at z_end, side planes of buildings, walls, fences, hedges), each
   column intersected with the (curved) plane and depth-tested against what is already there;
4. objects by the painter's algorithm, far to near, each a camera-facing billboard scaled by
   focal / z and depth-tested against the static background of steps 2-3;
5. the ego-vehicle bonnet (semseg ignore, depth invalid);
6. appearance: texture noise, illumination, domain lighting, glowing lamps, fog by depth, sensor noise.

Boxes come from what stays visible: box2d is the extent of an instance's visible pixels (inclusive
pixel indices, the Scalabel convention); instances with too few visible pixels are not labelled.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from mtwork.data.bdd100k import IGNORE_INDEX, SEMSEG_INDEX
from mtwork.data.synthdrive.domains import Domain
from mtwork.data.synthdrive.scene import Obj, Scene, Segment
from mtwork.data.synthdrive.shapes import DRAWERS

SKY, ROAD, SIDEWALK, TERRAIN = (SEMSEG_INDEX[k] for k in ("sky", "road", "sidewalk", "terrain"))
STRUCTURE_CLASS = {k: SEMSEG_INDEX[k] for k in ("building", "wall", "fence", "vegetation")}
_KIND_CODE = {k: i for i, k in enumerate(STRUCTURE_CLASS)}

#: Texture strength per semseg id (relative brightness noise): leafy and grassy surfaces the most.
_TEXTURE = np.full(256, 0.03, dtype=np.float32)
for _name, _k in {
    "road": 0.07, "sidewalk": 0.06, "building": 0.05, "wall": 0.07, "fence": 0.09, "pole": 0.04,
    "vegetation": 0.22, "terrain": 0.16, "sky": 0.01, "person": 0.05, "rider": 0.05,
}.items():
    _TEXTURE[SEMSEG_INDEX[_name]] = _k

#: Fraction of an instance's own pixels that must stay visible for it not to count as occluded.
OCCLUDED_BELOW = 0.8


@dataclass
class Rendered:
    """Outputs of one rendered scene.

    image: (H,W,3) uint8 RGB; semseg: (H,W) uint8 train ids, 255 ignore; drivable: (H,W) uint8
    training ids (0 background, 1 direct, 2 alternative); depth: (H,W) float32 z-depth in metres,
    0 = invalid (sky, bonnet); labels: det labels, each {"category", "box2d" (inclusive pixel
    indices), "occluded", "truncated", "attributes", "visible_pixels"}.
    """

    image: np.ndarray
    semseg: np.ndarray
    drivable: np.ndarray
    depth: np.ndarray
    labels: List[Dict[str, Any]]
    scene: str  # BDD100K scene attribute ("city street", "residential", "highway")


def _hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell (a, b); no RNG draws."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 1023).astype(np.float32) / 1024.0


def _smooth_noise(rng: np.random.Generator, size: Tuple[int, int], cell: int) -> np.ndarray:
    """(H,W) float32 noise, standard-normal values on a grid of ``cell`` px, bilinearly smoothed."""
    h, w = size
    grid = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


class _Canvas:
    """The frame buffers shared by the drawing steps."""

    def __init__(self, scene: Scene, domain: Domain):
        self.scene, self.domain = scene, domain
        h, w = scene.camera.size
        self.h, self.w = h, w
        self.rows = np.arange(h, dtype=np.float32) + 0.5  # pixel-centre coordinates
        self.cols = np.arange(w, dtype=np.float32) + 0.5
        self.rgb = np.zeros((h, w, 3), dtype=np.float32)
        self.sem = np.full((h, w), SKY, dtype=np.uint8)
        self.depth = np.zeros((h, w), dtype=np.float32)
        self.zbuf = np.full((h, w), np.inf, dtype=np.float32)
        self.lane = np.zeros((h, w), dtype=np.uint8)  # drivable training id of ground road pixels
        self.emissive = np.zeros((h, w), dtype=bool)
        self.inst = np.zeros((h, w), dtype=np.int32)

    def colour(self, kind: str, choice: int) -> np.ndarray:
        options = self.domain.palette[kind]
        return np.asarray(options[choice % len(options)], dtype=np.float32)


def _draw_sky(c: _Canvas, rng: np.random.Generator) -> None:
    """Gradient from zenith to horizon with soft clouds; only rows above the horizon can show it."""
    d, cam = c.domain, c.scene.camera
    rows = min(c.h, max(1, int(np.ceil(cam.horizon)) + 1))
    t = np.clip(c.rows[:rows] / max(cam.horizon, 1.0), 0.0, 1.0)[:, None, None]
    top, bottom = np.asarray(d.sky_top, np.float32), np.asarray(d.sky_horizon, np.float32)
    clouds = _smooth_noise(rng, (rows, c.w), max(8, c.w // 14))
    cover = np.clip(clouds - 0.3, 0.0, 1.0)[:, :, None] * (d.clouds * np.sqrt(1 - t))
    c.rgb[:rows] = (top * (1 - t) + bottom * t) * (1 - cover) + np.asarray((235, 235, 240), np.float32) * cover


def _draw_ground(c: _Canvas) -> None:
    cam, road, d = c.scene.camera, c.scene.road, c.domain
    g0 = int(np.ceil(cam.horizon + 0.5))
    if g0 >= c.h:
        return
    dv = c.rows[g0:] - cam.horizon
    z = (cam.focal * cam.height / dv)[:, None]  # (Hg,1) metres
    x = ((c.cols - cam.cx) / cam.focal)[None, :] * z
    r = x + road.cam_offset - road.curvature * z * z  # road-frame lateral, metres
    width = road.width
    on_road = (r >= 0) & (r < width)
    left_walk = (r < 0) & (r >= -road.sidewalk[0])
    right_walk = (r >= width) & (r < width + road.sidewalk[1])
    walk = left_walk | right_walk
    curb = walk & ((r > -road.curb) & (r < 0) | (r >= width) & (r < width + road.curb))

    # Material per pixel, then one palette lookup: 0 terrain, 1 sidewalk, 2 curb, 3 road, 4 white, 5 yellow.
    material = np.zeros(r.shape, dtype=np.uint8)
    material[walk] = 1
    material[curb] = 2
    material[on_road] = 3

    # World-anchored patches and paving joints give the ground perspective-correct texture.
    patch = _hash01(np.floor(r * (1 / 1.7)), np.broadcast_to(np.floor(z * (1 / 1.7)), r.shape), 7)
    shade = 0.9 + 0.2 * patch
    tile = 1.0 / 1.2
    rt, zt = r * tile, z * tile
    joints = (material == 1) & (((rt - np.floor(rt)) < 0.06) | ((zt - np.floor(zt)) < 0.06))
    shade[joints] = 0.78
    rl = r - road.parking[0]  # lateral position from the first lane's left edge
    lane_f = rl * (1.0 / road.lane_width)
    lane_pos = lane_f - np.floor(lane_f)
    if road.tracks:
        tracks = on_road & (((lane_pos > 0.22) & (lane_pos < 0.34)) | ((lane_pos > 0.66) & (lane_pos < 0.78)))
        shade[tracks] *= 0.9

    # Lane markings: dashed between same-direction lanes, double yellow at the centre, edge lines
    # (which also separate the parking strips from the lanes).
    nearest = np.rint(lane_f)
    dist = np.abs(rl - nearest * road.lane_width)
    inner = (nearest >= 1) & (nearest <= road.lanes - 1) & on_road
    centre = inner & (nearest == road.oncoming) & (road.oncoming > 0)
    dz = (z + road.dash_phase) * (1.0 / road.dash_period)
    dash = (dz - np.floor(dz)) < road.dash_length / road.dash_period
    white = inner & ~centre & (dist < 0.07) & dash
    if road.scene != "residential" or road.parking != (0.0, 0.0):
        lanes_w = road.lanes * road.lane_width
        white |= on_road & ((np.abs(rl - 0.15) < 0.07) | (np.abs(rl - (lanes_w - 0.15)) < 0.07))
    material[white] = 4
    material[centre & (dist > 0.05) & (dist < 0.19)] = 5
    shade[material == 5] = 1.0

    choice = c.scene.palette_choice
    table = np.stack([
        c.colour("terrain", choice["terrain"]), c.colour("sidewalk", choice["sidewalk"]),
        c.colour("curb", 0), c.colour("road", choice["road"]), c.colour("marking", 0),
        c.colour("yellow", 0),
    ])
    rgb = table[material] * shade[..., None]
    sem = np.asarray([TERRAIN, SIDEWALK, SIDEWALK, ROAD, ROAD, ROAD], np.uint8)[material]

    lane_idx = np.floor(lane_f)
    in_lanes = on_road & (lane_idx >= 0) & (lane_idx < road.lanes)  # parking strips are not drivable
    lane = np.where(in_lanes, np.where(lane_idx == road.ego_lane, 1, 2), 0).astype(np.uint8)

    c.sem[g0:] = sem
    c.rgb[g0:] = rgb
    c.depth[g0:] = np.broadcast_to(z, r.shape)
    c.zbuf[g0:] = c.depth[g0:]
    c.lane[g0:] = lane


def _plane_hits(c: _Canvas) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray, List[Segment]]]:
    """Per vertical structure: (z (W,), along (W,), valid (W,), segments) of each image column.

    The backdrop stands across the road at z_end (``along`` = road-frame r); a side plane at
    road-frame r_s bends with the road, so its camera-frame offset is d + curvature * z**2 with
    d = r_s - cam_offset, and the column's ray (x = a * z) meets it where
    curvature * z**2 - a * z + d = 0 (``along`` = z).
    """
    cam, road = c.scene.camera, c.scene.road
    a = (c.cols - cam.cx) / cam.focal  # lateral slope of each column's ray
    z_end = road.z_end
    hits = [(
        np.full(c.w, z_end, np.float32),
        a * z_end + road.cam_offset - road.curvature * z_end**2,
        np.ones(c.w, bool),
        c.scene.backdrop,
    )]
    k = road.curvature
    for plane in c.scene.planes:
        d = plane.r - road.cam_offset
        with np.errstate(divide="ignore", invalid="ignore"):
            if abs(k) < 1e-9:
                z = d / a
            else:
                sq = np.sqrt(np.where(a * a - 4 * k * d >= 0, a * a - 4 * k * d, np.nan))
                z1, z2 = (a - sq) / (2 * k), (a + sq) / (2 * k)
                z = np.fmin(np.where(z1 > 0, z1, np.inf), np.where(z2 > 0, z2, np.inf))
        valid = np.isfinite(z) & (z > 0.5) & (z < z_end)
        z = np.where(valid, z, 1.0).astype(np.float32)
        hits.append((z, z, valid, plane.segments))
    return hits


def _draw_structures(c: _Canvas) -> None:
    """Backdrop and side planes: depth-test per column first, then colour only the winners."""
    cam = c.scene.camera
    hits = _plane_hits(c)
    segs: List[Segment] = [s for *_, plane_segs in hits for s in plane_segs]
    if not segs:
        return
    plane_of = np.concatenate([np.full(len(h[3]), i) for i, h in enumerate(hits)]).astype(np.int64)
    n_planes = len(hits)
    z_cols = np.ones((n_planes, c.w), np.float32)
    along_cols = np.zeros((n_planes, c.w), np.float32)
    top_cols = np.zeros((n_planes, c.w), np.float32)  # structure height per column, metres
    seg_map = np.full((c.h, c.w), -1, dtype=np.int32)
    offset = 0
    for p, (z, along, valid, plane_segs) in enumerate(hits):
        n = len(plane_segs)
        if n:
            starts = np.asarray([s.a for s in plane_segs])
            ends = np.asarray([s.b for s in plane_segs])
            idx = np.searchsorted(starts, along, side="right") - 1
            idx_c = np.clip(idx, 0, n - 1)
            ok = valid & (idx >= 0) & (along < ends[idx_c])
            heights = np.asarray([s.height for s in plane_segs], np.float32)[idx_c]
            veg = np.asarray([s.kind == "vegetation" for s in plane_segs])[idx_c]
            # Hedges and tree lines get a bumpy top edge.
            heights = heights + np.where(veg, 0.25 * heights * np.sin(along * 1.7 + p) * np.cos(along * 0.6), 0.0)
            z_cols[p], along_cols[p], top_cols[p] = z, along, heights
            if ok.any():
                zc = np.where(ok, z, np.inf).astype(np.float32)
                v_top = cam.horizon - cam.focal * (heights - cam.height) / zc
                v_bot = cam.horizon + cam.focal * cam.height / zc
                # Only the band of rows the structure can cover is tested.
                r0 = int(np.clip(np.floor(v_top[ok].min()), 0, c.h))
                r1 = int(np.clip(np.ceil(v_bot[ok].max()) + 1, r0, c.h))
                rows, zbuf, band = c.rows[r0:r1, None], c.zbuf[r0:r1], seg_map[r0:r1]
                mask = (rows >= v_top[None]) & (rows < v_bot[None]) & (zc[None] < zbuf)
                np.copyto(zbuf, np.broadcast_to(zc[None], mask.shape), where=mask)
                np.copyto(band, np.broadcast_to((idx_c + offset).astype(np.int32)[None], mask.shape), where=mask)
        offset += n

    ys, xs = np.nonzero(seg_map >= 0)
    if ys.size == 0:
        return
    g = seg_map[ys, xs]
    p = plane_of[g]
    zpix = z_cols[p, xs]
    kind_code = np.asarray([_KIND_CODE[s.kind] for s in segs], dtype=np.int8)[g]
    sem_lut = np.asarray([STRUCTURE_CLASS[s.kind] for s in segs], dtype=np.uint8)
    colours = np.stack([c.colour(s.kind, s.colour) * s.shade for s in segs]).astype(np.float32)
    rgb = colours[g]
    shade = np.ones(ys.size, np.float32)
    # Height above the road of each pixel and position along its segment give the patterns.
    y = cam.height - (c.rows[ys] - cam.horizon) * zpix / cam.focal
    pos = along_cols[p, xs] - np.asarray([s.a for s in segs], np.float32)[g]
    lit = np.zeros(ys.size, bool)
    b = np.nonzero(kind_code == _KIND_CODE["building"])[0]
    if b.size:
        gb, yb = g[b], y[b]
        fx = pos[b] / np.asarray([s.window[0] for s in segs], np.float32)[gb]
        fy = yb / np.asarray([s.window[1] for s in segs], np.float32)[gb]
        wx, wy = fx - np.floor(fx), fy - np.floor(fy)
        win = (wx > 0.22) & (wx < 0.78) & (wy > 0.35) & (wy < 0.8) & (yb > 1.2)
        win &= yb < top_cols[p[b], xs[b]] - 0.7
        pane = _hash01(np.floor(fx[win]) + 1000 * gb[win], np.floor(fy[win]), 5)
        wi = b[win]
        rgb[wi] = c.colour("window", 0) * (0.7 + 0.6 * pane[:, None])
        if c.domain.lights > 0:
            lit[wi[pane < 0.25]] = True
            rgb[lit] = (255, 205, 130)
        shade[b[yb < 1.0]] = 0.8  # darker ground floor
    f = np.nonzero(kind_code == _KIND_CODE["fence"])[0]
    if f.size:  # vertical slats
        q = pos[f] * 4.0
        shade[f[(q - np.floor(q)) < 0.3]] = 0.65
    w = np.nonzero(kind_code == _KIND_CODE["wall"])[0]
    if w.size:  # courses of blocks
        q = y[w] * 4.0
        shade[w[(q - np.floor(q)) < 0.12]] = 0.85
    rgb *= shade[:, None]

    c.rgb[ys, xs] = rgb
    c.sem[ys, xs] = sem_lut[g]
    c.depth[ys, xs] = zpix
    c.emissive[ys, xs] = lit


def _raster(prims: List[tuple], scale: float, u0: float, v0: float, size: Tuple[int, int]):
    """Draw primitives (metres) into a part-code map covering their image-clipped extent.

    Screen position: u = u0 + scale * x, v = v0 - scale * y. Returns (codes (h,w) uint8, (top,
    left) of that map in the image, truncated: whether the drawing extends beyond the image), or
    None when nothing falls inside the image.
    """
    h_img, w_img = size
    xs: List[float] = []
    ys: List[float] = []
    for p in prims:
        kind = p[0]
        if kind == "rect":
            xs += [p[1], p[3]]
            ys += [p[2], p[4]]
        elif kind in ("poly", "line"):
            pad = p[2] / 2 if kind == "line" else 0.0
            xs += [q[0] - pad for q in p[1]] + [q[0] + pad for q in p[1]]
            ys += [q[1] - pad for q in p[1]] + [q[1] + pad for q in p[1]]
        else:  # ellipse (cx, cy, rx, ry) or ring (cx, cy, r, t)
            rx, ry = (p[3], p[4]) if kind == "ellipse" else (p[3], p[3])
            xs += [p[1] - rx, p[1] + rx]
            ys += [p[2] - ry, p[2] + ry]
    left, right = u0 + scale * min(xs), u0 + scale * max(xs)
    top, bottom = v0 - scale * max(ys), v0 - scale * min(ys)
    truncated = left < 0 or top < 0 or right > w_img or bottom > h_img
    x_lo, y_lo = max(0, int(np.floor(left))), max(0, int(np.floor(top)))
    x_hi, y_hi = min(w_img, int(np.ceil(right)) + 1), min(h_img, int(np.ceil(bottom)) + 1)
    if x_hi <= x_lo or y_hi <= y_lo:
        return None
    img = Image.new("L", (x_hi - x_lo, y_hi - y_lo), 0)
    draw = ImageDraw.Draw(img)
    ox, oy = u0 - x_lo, v0 - y_lo

    def pt(x: float, y: float) -> Tuple[float, float]:
        return (ox + scale * x, oy - scale * y)

    for p in prims:
        kind, code = p[0], p[-1]
        if kind == "rect":
            ua, va = pt(p[1], p[4])
            ub, vb = pt(p[3], p[2])
            x0, y0 = int(round(ua)), int(round(va))
            # At least one pixel, so thin poles stay visible far away.
            draw.rectangle([x0, y0, max(x0, int(round(ub)) - 1), max(y0, int(round(vb)) - 1)], fill=code)
        elif kind == "poly":
            draw.polygon([pt(*q) for q in p[1]], fill=code)
        elif kind == "ellipse":
            (ua, va), (ub, vb) = pt(p[1] - p[3], p[2] + p[4]), pt(p[1] + p[3], p[2] - p[4])
            draw.ellipse([ua, va, max(ua, ub - 1), max(va, vb - 1)], fill=code)
        elif kind == "ring":
            (ua, va), (ub, vb) = pt(p[1] - p[3], p[2] + p[3]), pt(p[1] + p[3], p[2] - p[3])
            draw.ellipse([ua, va, max(ua, ub - 1), max(va, vb - 1)], outline=code,
                         width=max(1, int(round(scale * p[4]))))
        else:  # line
            draw.line([pt(*q) for q in p[1]], fill=code, width=max(1, int(round(scale * p[2]))))
    return np.asarray(img), (y_lo, x_lo), truncated


def _draw_objects(c: _Canvas, static_z: np.ndarray) -> List[Dict[str, Any]]:
    """Painter's algorithm over the objects; returns one record per labelled instance."""
    cam, road = c.scene.camera, c.scene.road
    greens = c.domain.palette["vegetation"]
    instances: List[Dict[str, Any]] = []
    order = sorted(range(len(c.scene.objects)), key=lambda i: -c.scene.objects[i].z)
    for obj_index in order:
        obj: Obj = c.scene.objects[obj_index]
        if obj.z < 2.0:
            continue
        drawer = DRAWERS[obj.kind]
        prims, parts, slots = drawer(obj.params, greens) if obj.kind == "tree" else drawer(obj.params)
        x_cam = obj.r - road.cam_offset + road.curvature * obj.z**2
        scale = cam.focal / obj.z
        u0 = cam.cx + scale * x_cam
        v0 = cam.horizon + scale * cam.height
        raster = _raster(prims, scale, u0, v0, (c.h, c.w))
        if raster is None:
            continue
        codes, (top, left), truncated = raster
        hh, ww = codes.shape
        region = (slice(top, top + hh), slice(left, left + ww))
        # Global instance id per slot (0 = not a detection instance).
        first_id = len(instances) + 1
        slot_ids = [first_id + i for i in range(len(slots))]
        sem_lut = np.zeros(len(parts) + 1, dtype=np.uint8)
        gid_lut = np.zeros(len(parts) + 1, dtype=np.int32)
        rgb_lut = np.zeros((len(parts) + 1, 3), dtype=np.float32)
        emit_lut = np.zeros(len(parts) + 1, dtype=bool)
        for code, part in enumerate(parts, start=1):
            sem_lut[code] = part.semseg
            gid_lut[code] = slot_ids[part.slot] if part.slot >= 0 else 0
            rgb_lut[code] = part.rgb
            emit_lut[code] = part.emissive
        gids = gid_lut[codes]
        for i, (category, attributes) in enumerate(slots):
            instances.append({
                "category": category, "attributes": attributes, "region": region,
                "full": int(np.count_nonzero(gids == slot_ids[i])), "truncated": truncated,
                "object": obj_index,
            })
        sel = (codes > 0) & (obj.z < static_z[region])
        if not sel.any():
            continue
        ys, xs = np.nonzero(sel)
        pc = codes[ys, xs]
        # Objects are a little darker towards the ground (ambient occlusion, cheaply).
        y_m = (v0 - (top + ys + 0.5)) / scale
        height = max(1e-3, max(q for p in prims for q in _ys(p)))
        shade = 0.8 + 0.25 * np.clip(y_m / height, 0.0, 1.0)
        c.rgb[region][ys, xs] = rgb_lut[pc] * shade[:, None]
        c.sem[region][ys, xs] = sem_lut[pc]
        c.inst[region][ys, xs] = gid_lut[pc]
        c.depth[region][ys, xs] = obj.z
        c.emissive[region][ys, xs] = emit_lut[pc]
    return instances


def _ys(prim: tuple) -> List[float]:
    """Heights (metres) a primitive reaches, for the object's shading gradient."""
    kind = prim[0]
    if kind == "rect":
        return [prim[2], prim[4]]
    if kind in ("poly", "line"):
        return [q[1] for q in prim[1]]
    return [prim[2] + (prim[4] if kind == "ellipse" else prim[3])]


def _draw_hood(c: _Canvas) -> None:
    hood = c.scene.hood
    if hood is None:
        return
    cam = c.scene.camera
    edge = c.h * (1 - hood["top"]) + hood["bulge"] * c.h * ((c.cols - cam.cx) / (c.w / 2)) ** 2
    mask = c.rows[:, None] >= edge[None, :]
    if not mask.any():
        return
    grey = hood["grey"]
    # A reflection band along the bonnet's edge; darker towards the bottom of the image.
    t = np.clip((c.rows[:, None] - edge[None, :]) / max(1.0, hood["top"] * c.h), 0, 1)
    value = grey * (1.25 - 0.6 * t)
    c.rgb[mask] = np.repeat(value[mask][:, None], 3, axis=1) * np.asarray((1.0, 1.0, 1.05), np.float32)
    c.sem[mask] = IGNORE_INDEX
    c.depth[mask] = 0.0
    c.inst[mask] = 0
    c.emissive[mask] = False


@lru_cache(maxsize=4)
def _noise_bank(size: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Fixed noise fields twice the image size; each image takes windows at random offsets.

    "pixel": (2H,2W,3) standard normal; "medium": (2H,2W) smoothed over 3 px; "light": (2H,2W)
    smoothed over a tenth of the width. Drawing these per image would cost more than rendering;
    random windows of fixed fields look the same to a network and stay deterministic (fixed seed).
    """
    h, w = size
    rng = np.random.default_rng(20261123)
    return {
        "pixel": rng.standard_normal((2 * h, 2 * w, 3), dtype=np.float32),
        "medium": _smooth_noise(rng, (2 * h, 2 * w), 3),
        "light": _smooth_noise(rng, (2 * h, 2 * w), max(8, w // 10)),
    }


def _appearance(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Texture, illumination, domain light, glowing lamps, fog by depth, sensor noise -> uint8."""
    d = c.domain
    bank = _noise_bank((c.h, c.w))
    offsets = rng.integers(0, [c.h, c.w] * 4).tolist()

    def window(name: str, k: int) -> np.ndarray:
        oy, ox = offsets[2 * k], offsets[2 * k + 1]
        return bank[name][oy : oy + c.h, ox : ox + c.w]

    sky = c.sem == SKY
    factor = window("pixel", 0)[..., 0] * 0.5 + window("medium", 1) * 0.9
    factor *= _TEXTURE[c.sem]
    factor += 1.0
    factor *= np.where(sky, 1.0, 1.0 + 0.07 * window("light", 2))
    fog_w = np.where(sky, d.sky_fog, 1.0 - np.exp(-c.depth * (1.0 / d.fog_distance))).astype(np.float32)
    fog_w[(c.depth <= 0) & ~sky] = 0.0  # the bonnet is not behind any fog
    gain = np.asarray(d.tint, np.float32) * d.brightness
    keep = factor * (1.0 - fog_w)
    out = c.rgb * keep[..., None]
    out *= gain
    out += np.asarray(d.fog_colour, np.float32) * fog_w[..., None]
    if d.lights > 0 and c.emissive.any():
        # Lamps emit: they keep their own colour instead of the dim ambient light.
        ys, xs = np.nonzero(c.emissive)
        out[ys, xs] += keep[ys, xs, None] * c.rgb[ys, xs] * (1.0 - gain) * d.lights
    if d.noise_std > 0:
        noise = window("pixel", 3) * d.noise_std
        noise += 0.5  # round to nearest in the uint8 cast below
        out += noise
    else:
        out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _labels(c: _Canvas, instances: List[Dict[str, Any]], min_pixels: int) -> List[Dict[str, Any]]:
    labels = []
    for gid, inst in enumerate(instances, start=1):
        mask = c.inst[inst["region"]] == gid
        visible = int(np.count_nonzero(mask))
        if visible < min_pixels:
            continue
        ys, xs = np.nonzero(mask)
        top, left = inst["region"][0].start, inst["region"][1].start
        x1, x2 = left + int(xs.min()), left + int(xs.max())
        y1, y2 = top + int(ys.min()), top + int(ys.max())
        if x2 - x1 < 1 or y2 - y1 < 1:  # under 2 px wide or tall
            continue
        labels.append({
            "category": inst["category"],
            "box2d": {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)},
            "occluded": visible < OCCLUDED_BELOW * max(inst["full"], 1),
            "truncated": bool(inst["truncated"]),
            "attributes": dict(inst["attributes"]),
            "visible_pixels": visible,
        })
    return labels


def default_min_box_pixels(image_size: Tuple[int, int]) -> int:
    """Visible pixels an instance needs for a box by default: 10, or 1e-4 of the image at large sizes."""
    return max(10, int(round(1e-4 * image_size[0] * image_size[1])))


def render_scene(scene: Scene, domain: Domain, rng: np.random.Generator,
                 min_box_pixels: Optional[int] = None) -> Rendered:
    """Rasterise ``scene`` as seen in ``domain``; ``rng`` supplies texture and noise draws.

    min_box_pixels: visible pixels an instance needs to be labelled (a box); None: the default of
    :func:`default_min_box_pixels`. Smaller instances stay in the image and its masks, unboxed.
    """
    c = _Canvas(scene, domain)
    _draw_sky(c, rng)
    _draw_ground(c)
    _draw_structures(c)
    instances = _draw_objects(c, c.zbuf.copy())
    _draw_hood(c)
    min_pixels = default_min_box_pixels((c.h, c.w)) if min_box_pixels is None else int(min_box_pixels)
    labels = _labels(c, instances, min_pixels)
    drivable = np.where(c.sem == ROAD, c.lane, 0).astype(np.uint8)
    return Rendered(
        image=_appearance(c, rng),
        semseg=c.sem,
        drivable=drivable,
        depth=c.depth,
        labels=labels,
        scene=scene.road.scene,
    )

"""Render a CamVid label map as a synthetic image: real scene geometry, procedural appearance (the way GTA5 is a
synthetic source for Cityscapes). No photo pixel is used; the image is a function of the label map and an RNG.

Per class: a base colour, jittered per image and per instance (connected component), and a procedural texture
(window grids on buildings, dashed lane marks on road, paving joints, foliage noise on trees, a sky gradient with
clouds, fence slats, pole stripes, car windows and wheels, clothes on people); every periodic texture has its own
phase per instance, so none sits at fixed screen positions. Per image: the class colours (a palette), shading
by image row, a global light level, a colour temperature, a little blur and sensor noise.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# CamVid raw ids (the 11 evaluated classes, then 11 = Unlabelled)
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST, UNLABELLED = range(12)
# base colours (RGB, 0-1): plausible but flat, like a game engine's materials
BASE = np.array([[0.55, 0.70, 0.92], [0.62, 0.53, 0.46], [0.48, 0.48, 0.50], [0.34, 0.33, 0.35],
                 [0.64, 0.61, 0.57], [0.24, 0.46, 0.19], [0.80, 0.20, 0.15], [0.52, 0.42, 0.31],
                 [0.55, 0.10, 0.10], [0.30, 0.30, 0.55], [0.25, 0.25, 0.30], [0.42, 0.42, 0.40]], np.float32)
CAR_PAINTS = np.array([[0.70, 0.08, 0.08], [0.10, 0.20, 0.60], [0.88, 0.88, 0.86], [0.08, 0.08, 0.09],
                       [0.62, 0.63, 0.66], [0.12, 0.32, 0.16], [0.80, 0.70, 0.15]], np.float32)
SIGN_PAINTS = np.array([[0.85, 0.12, 0.10], [0.10, 0.25, 0.75], [0.95, 0.80, 0.10], [0.92, 0.92, 0.90]], np.float32)
CLOTHES = np.array([[0.70, 0.15, 0.15], [0.15, 0.25, 0.60], [0.85, 0.85, 0.80], [0.15, 0.15, 0.15],
                    [0.55, 0.45, 0.30], [0.20, 0.45, 0.25], [0.80, 0.55, 0.15]], np.float32)
TROUSERS = np.array([[0.10, 0.12, 0.25], [0.08, 0.08, 0.08], [0.35, 0.28, 0.20], [0.40, 0.40, 0.42]], np.float32)
INSTANCE_CLASSES = (BUILDING, POLE, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST)


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` pixels wide (a random grid, bilinearly upsampled)."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = torch.from_numpy(rng.random((1, 1, gh, gw), dtype=np.float32))
    return F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def style_palette(style_rng: np.random.Generator) -> np.ndarray:
    """A style's class colours: the base colours with each channel scaled by a factor in [0.8, 1.2]."""
    return np.clip(BASE * style_rng.uniform(0.8, 1.2, BASE.shape).astype(np.float32), 0, 1)


def _components(label: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
    """One id per connected component of each instance class (0 elsewhere), their bounding boxes (index 0 unused)
    and their classes (``classes[id]``; 0 for id 0)."""
    comp = np.zeros(label.shape, np.int32)
    boxes: list = [None]
    classes = [0]
    n = 0
    for c in INSTANCE_CLASSES:
        lab, k = ndimage.label(label == c)
        if k:
            comp[lab > 0] = lab[lab > 0] + n
            boxes += ndimage.find_objects(lab)
            classes += [c] * k
            n += k
    return comp, boxes, np.array(classes, np.int32)


def render_label_map(label: np.ndarray, rng: np.random.Generator, palette: Optional[np.ndarray] = None) -> np.ndarray:
    """An ``H x W x 3`` float32 image in [0, 1] rendered from a raw CamVid label map (ids 0-11) alone.

    ``palette``: the class colours (:func:`style_palette`); ``None`` draws them from ``rng`` first (a palette per
    image). ``rng`` draws everything else (instance colours, texture phases, light), so the same ``(label, rng
    state, palette)`` gives the same image, whatever the number of threads.
    """
    if palette is None:
        palette = style_palette(rng)
    h, w = label.shape
    s = w / 480.0  # textures are sized for CamVid's 480-pixel width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = palette[np.clip(label, 0, UNLABELLED)].copy()
    comp, boxes, cls_of = _components(label)
    n = len(cls_of) - 1
    # per-instance colour: a jitter of the class colour, or a paint drawn from a list (cars, signs, clothes)
    jitter = rng.uniform(0.85, 1.15, (n + 1, 3)).astype(np.float32)
    jitter[0] = 1.0
    img *= jitter[comp]
    rel_y = np.zeros((h, w), np.float32)  # position inside the component's box, 0 at its top, 1 at its bottom
    for i, box in enumerate(boxes[1:], 1):
        ys = box[0]
        m = comp[box] == i
        rel_y[box][m] = ((yy[box][m] - ys.start) / max(ys.stop - ys.start - 1, 1))
    paint = np.ones((n + 1, 3), np.float32)
    lower = np.ones((n + 1, 3), np.float32)
    for i in range(1, n + 1):
        if cls_of[i] == CAR:
            paint[i] = CAR_PAINTS[rng.integers(len(CAR_PAINTS))]
        elif cls_of[i] == SIGN:
            paint[i] = SIGN_PAINTS[rng.integers(len(SIGN_PAINTS))]
        elif cls_of[i] in (PEDESTRIAN, BICYCLIST):
            paint[i] = CLOTHES[rng.integers(len(CLOTHES))]
            lower[i] = TROUSERS[rng.integers(len(TROUSERS))]
    painted = np.isin(cls_of, (CAR, SIGN, PEDESTRIAN, BICYCLIST))[comp]
    img[painted] = (paint[comp] * jitter[comp])[painted]

    car, people = label == CAR, (label == PEDESTRIAN) | (label == BICYCLIST)
    img[car & (rel_y < 0.35)] = np.array([0.18, 0.20, 0.24], np.float32)  # windows
    img[car & (rel_y > 0.85)] = np.array([0.05, 0.05, 0.05], np.float32)  # wheels and shadow
    img[people & (rel_y > 0.5)] = lower[comp][people & (rel_y > 0.5)]
    img[people & (rel_y < 0.15)] = np.array([0.55, 0.40, 0.32], np.float32)  # head

    shade = np.ones((h, w), np.float32)
    # buildings: a window grid with a period, phase and window colour per building
    bld = label == BUILDING
    px = rng.uniform(10, 24, n + 1).astype(np.float32) * s
    py = rng.uniform(12, 28, n + 1).astype(np.float32) * s
    ox, oy = rng.uniform(0, 30, n + 1).astype(np.float32), rng.uniform(0, 30, n + 1).astype(np.float32)
    frac = rng.uniform(0.45, 0.7, n + 1).astype(np.float32)
    pxc, pyc = px[comp], py[comp]
    window = bld & (((xx + ox[comp]) % pxc) < frac[comp] * pxc) & (((yy + oy[comp]) % pyc) < frac[comp] * pyc)
    glass = rng.uniform(0.1, 0.35, (n + 1, 3)).astype(np.float32) * np.array([0.9, 1.0, 1.2], np.float32)
    img[window] = glass[comp][window]
    # road: fine grain and dashed lane marks down the middle of each row's road pixels
    road = label == ROAD
    shade += road * (value_noise(rng, h, w, 3 * s) - 0.5) * 0.12
    count = road.sum(1)
    centre = (road * xx).sum(1) / np.maximum(count, 1)
    half = 0.5 + 4.0 * s * np.clip(count / w, 0, 1)
    dash = ((yy + rng.uniform(0, 40)) // (20 * s)) % 2 == 0
    marks = road & (np.abs(xx - centre[:, None]) < half[:, None]) & dash & (count[:, None] > 20 * s)
    img[marks] = np.array([0.90, 0.88, 0.80], np.float32)
    # pavement: paving joints, their grid shifted per pavement region
    pav = label == PAVEMENT
    tile = 14 * s
    jx, jy = (xx + ox[comp] * s) % tile, (yy + oy[comp] * s) % (tile * 0.6)
    shade -= pav * 0.12 * ((jx < 1.5) | (jy < 1.5))
    # trees: foliage, several scales of noise
    tree = label == TREE
    foliage = 0.5 * value_noise(rng, h, w, 3 * s) + 0.3 * value_noise(rng, h, w, 10 * s) \
        + 0.2 * value_noise(rng, h, w, 30 * s)
    shade += tree * (foliage - 0.5) * 0.9
    # sky: brighter towards the horizon, with soft clouds
    sky = label == SKY
    clouds = np.clip(value_noise(rng, h, w, 60 * s) - rng.uniform(0.45, 0.75), 0, 1) * 1.8
    img[sky] = img[sky] * (1 - clouds[sky, None]) + clouds[sky, None] * 0.92
    shade += sky * (yy / h) * 0.35
    # fences: slats; poles: a rounded shading across x; each with its own phase
    shade -= (label == FENCE) * 0.35 * (((xx + ox[comp] * s) % (8 * s)) > 5 * s)
    shade *= np.where(label == POLE, 0.8 + 0.3 * np.sin((xx + ox[comp]) * 0.9), 1.0).astype(np.float32)
    shade += (label == UNLABELLED) * (value_noise(rng, h, w, 6 * s) - 0.5) * 0.4
    img *= shade[..., None]

    # the whole image: shading by row, a light level, a colour temperature, gamma, blur and sensor noise
    row = 1.0 + rng.uniform(-0.3, 0.3) * (yy / h - 0.5)
    light = rng.uniform(0.6, 1.3)
    temp = rng.uniform(-1.0, 1.0)
    tint = np.array([1 + 0.12 * temp, 1.0, 1 - 0.12 * temp], np.float32)
    img = np.clip(img * (row * light)[..., None] * tint, 0, 1) ** rng.uniform(0.8, 1.25)
    img = ndimage.uniform_filter(img, size=(3, 3, 1), mode="nearest")
    img = img + rng.normal(0, 0.015, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)

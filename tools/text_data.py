"""Captions and region features for text prompts (tools/train_text.py, evaluate_text.py).

Captions: several phrasings per object of a data_engine scene, built from the object's
colour, shape, size and position (the scene generator itself is untouched, so the
default segmentation model's training data does not change). Two vocabularies: TRAIN
words are the only ones the region tower ever sees; HELDOUT words never appear in
training captions and measure what the pretrained language model brings.

Region features: cheap statistics of the image pixels under a candidate mask and of the
mask's shape. src/runtime/text/features.rs computes the same vector; the parity test
compares it with tests/fixtures/text/features.json written by `train_text.py fixtures`.
"""

from __future__ import annotations

import math

import numpy as np

TRAIN_COLOURS = {
    "red": ["red"], "green": ["green"], "blue": ["blue"], "yellow": ["yellow"],
    "orange": ["orange"], "purple": ["purple"], "pink": ["pink"], "cyan": ["cyan", "light blue"],
    "white": ["white"], "black": ["black"], "gray": ["gray"], "brown": ["brown"],
}
HELDOUT_COLOURS = {
    "red": ["crimson", "scarlet"], "green": ["emerald"], "blue": ["azure", "cobalt"],
    "yellow": ["golden", "lemon"], "orange": ["tangerine"], "purple": ["violet"],
    "pink": ["rose"], "cyan": ["turquoise"], "white": ["ivory"], "black": ["ebony"],
    "gray": ["grey", "silver"], "brown": ["chocolate"],
}
TRAIN_SHAPES = {
    "ellipse": ["ellipse", "oval"], "rectangle": ["rectangle", "box"], "polygon": ["polygon"],
    "star": ["star"], "ring": ["ring", "donut"], "bar": ["bar", "stick"], "triangle": ["triangle"],
}
HELDOUT_SHAPES = {
    "ellipse": ["disc", "circle"], "rectangle": ["square", "oblong"], "polygon": ["irregular shape"],
    "star": ["pentagram", "starburst"], "ring": ["hoop", "loop"], "bar": ["rod", "strip"],
    "triangle": ["wedge"],
}
SIZE_WORDS = {"tiny": ["tiny"], "small": ["small"], "medium": ["medium-sized"], "large": ["large", "big"]}


def size_word(area_frac: float) -> str:
    # Visible area as a fraction of the image; roughly the data engine's size classes.
    if area_frac < 0.004:
        return "tiny"
    if area_frac < 0.02:
        return "small"
    if area_frac < 0.08:
        return "medium"
    return "large"


def position_words(cx: float, cy: float) -> list:
    """Position phrases from the centroid (fractions of width / height)."""
    out = []
    if cx < 0.33:
        out.append("on the left")
    elif cx > 0.67:
        out.append("on the right")
    if cy < 0.33:
        out.append("at the top")
    elif cy > 0.67:
        out.append("at the bottom")
    if 0.33 <= cx <= 0.67 and 0.33 <= cy <= 0.67:
        out.append("in the middle")
    return out


def phrasings(rng, colour, shape, area_frac, cx, cy, vocab="train", n=4) -> list:
    """n captions of one object in the given vocabulary."""
    cols = (TRAIN_COLOURS if vocab == "train" else HELDOUT_COLOURS)[colour]
    shps = (TRAIN_SHAPES if vocab == "train" else HELDOUT_SHAPES)[shape]
    size = SIZE_WORDS[size_word(area_frac)]
    pos = position_words(cx, cy)
    out = []
    for _ in range(n):
        c = cols[rng.integers(len(cols))]
        s = shps[rng.integers(len(shps))]
        k = rng.integers(6)
        if k == 0:
            t = f"the {c} {s}"
        elif k == 1:
            t = f"a {c} {s}"
        elif k == 2:
            t = f"the {size[rng.integers(len(size))]} {c} {s}"
        elif k == 3 and pos:
            t = f"the {c} {s} {pos[rng.integers(len(pos))]}"
        elif k == 4:
            t = f"{c} {s}"
        else:
            t = f"the {s} that is {c}"
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------
# Region features. Keep in step with src/runtime/text/features.rs (same order, same maths).

# Radial profile: the farthest mask pixel from the centroid in each of RADIAL_BINS angular
# sectors, normalised by its mean. Its DFT magnitudes do not change when the object
# rotates, and they name the shape: a five-pointed star is strong at harmonic 5, a triangle
# at 3, rectangles and bars at 2 and 4, ellipses at 2 only.
RADIAL_BINS = 32
RADIAL_HARMONICS = 8

FEATURE_NAMES = (
    ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "mean_sat", "mean_val", "mean_chroma",
     "hue_x", "hue_y"]
    + [f"hist_{i}" for i in range(27)]
    + ["area_frac", "sqrt_area_frac", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "log_aspect", "extent",
       "centroid_x", "centroid_y", "elongation", "compactness", "perimeter_ratio", "hole_frac", "solidity",
       "log_hu1", "log_hu2", "log_hu3", "log_hu4"]
    + [f"radial_harmonic_{k}" for k in range(1, RADIAL_HARMONICS + 1)]
    + ["radial_cv", "radial_fill"]
)
N_FEATURES = len(FEATURE_NAMES)


def _hull_area(points):
    """Area of the convex hull of integer points (Andrew's monotone chain, shoelace)."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    s = 0
    for i in range(len(hull)):
        x0, y0 = hull[i]
        x1, y1 = hull[(i + 1) % len(hull)]
        s += x0 * y1 - x1 * y0
    return abs(s) / 2.0


def _hull_area_fast(pts):
    """Same area as _hull_area (exact for integer points), via OpenCV."""
    import cv2

    if len(pts) < 3:
        return 0.0
    h = cv2.convexHull(pts.astype(np.int32))
    return float(cv2.contourArea(h))


def _holes(m):
    """Pixels inside the bbox crop `m` that are not mask and not 4-connected to its border."""
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), bool)
    pad[1:-1, 1:-1] = m
    seen = pad.copy()  # mask pixels are walls
    stack = [(0, 0)]
    seen[0, 0] = True
    while stack:
        y, x = stack.pop()
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            yy, xx = y + dy, x + dx
            if 0 <= yy < h + 2 and 0 <= xx < w + 2 and not seen[yy, xx]:
                seen[yy, xx] = True
                stack.append((yy, xx))
    return int((~seen).sum())


def _holes_fast(m):
    import cv2

    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m
    fill = pad.copy()
    ffmask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(fill, ffmask, (0, 0), 1, flags=4)
    return int((fill == 0).sum())


def region_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 [N_FEATURES] for a uint8 RGB image [H, W, 3] and a bool mask [H, W]."""
    H, W = mask.shape
    f = np.zeros(N_FEATURES, np.float64)
    rows_any = np.nonzero(mask.any(1))[0]
    if len(rows_any) == 0:
        return f.astype(np.float32)
    cols_any = np.nonzero(mask.any(0))[0]
    y0, y1 = int(rows_any[0]), int(rows_any[-1]) + 1
    x0, x1 = int(cols_any[0]), int(cols_any[-1]) + 1
    crop = mask[y0:y1, x0:x1]
    ys, xs = np.nonzero(crop)
    sub = image[y0:y1, x0:x1]
    px8 = sub[ys, xs]
    ys = ys + y0
    xs = xs + x0
    area = len(xs)
    px = px8.astype(np.float64) / 255.0
    mean = px.mean(0)
    std = np.sqrt(np.maximum((px * px).mean(0) - mean * mean, 0.0))
    mx = px.max(1)
    mn = px.min(1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.where(mx > 0, mx, 1.0), 0.0)
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    ha = r - 0.5 * (g + b)
    hb = (math.sqrt(3.0) / 2.0) * (g - b)
    hn = np.sqrt(ha * ha + hb * hb)
    ok = hn > 0.02
    safe = np.where(ok, hn, 1.0)
    hue_x = np.where(ok, ha / safe, 0.0).sum() / area
    hue_y = np.where(ok, hb / safe, 0.0).sum() / area
    q = np.minimum(px8.astype(np.int64) * 3 // 256, 2)
    hist = np.bincount(q[:, 0] * 9 + q[:, 1] * 3 + q[:, 2], minlength=27) / area
    f[0:3] = mean
    f[3:6] = std
    f[6] = sat.mean()
    f[7] = mx.mean()
    f[8] = chroma.mean()
    f[9] = hue_x
    f[10] = hue_y
    f[11:38] = hist

    bw, bh = x1 - x0, y1 - y0
    cx = xs.mean()
    cy = ys.mean()
    dx = xs - cx
    dy = ys - cy
    mu20 = (dx * dx).sum()
    mu02 = (dy * dy).sum()
    mu11 = (dx * dy).sum()
    mu30 = (dx ** 3).sum()
    mu03 = (dy ** 3).sum()
    mu21 = (dx * dx * dy).sum()
    mu12 = (dx * dy * dy).sum()
    c20, c02, c11 = mu20 / area, mu02 / area, mu11 / area
    tr = c20 + c02
    disc = math.sqrt(max((c20 - c02) ** 2 + 4 * c11 * c11, 0.0))
    l1 = (tr + disc) / 2 + 1.0 / 12.0  # + pixel variance, so a 1-pixel line is not degenerate
    l2 = max((tr - disc) / 2, 0.0) + 1.0 / 12.0

    inner = np.zeros((bh + 2, bw + 2), bool)
    inner[1:-1, 1:-1] = crop
    interior = inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    perim = area - int(interior.sum())
    holes = _holes_fast(crop)
    # Hull of pixel corners: per row, the outer corners of its first and last mask pixel.
    has = crop.any(1)
    ry = np.nonzero(has)[0]
    first = crop[ry].argmax(1)
    last = bw - 1 - crop[ry, ::-1].argmax(1)
    a = first + x0
    bb = last + 1 + x0
    yy = ry + y0
    pts = np.concatenate([np.stack([a, yy], 1), np.stack([a, yy + 1], 1),
                          np.stack([bb, yy], 1), np.stack([bb, yy + 1], 1)])
    hull = _hull_area_fast(pts)

    def eta(mu, p, q_):
        return mu / area ** (1 + (p + q_) / 2.0)

    e20, e02, e11 = eta(mu20, 2, 0), eta(mu02, 0, 2), eta(mu11, 1, 1)
    e30, e03, e21, e12 = eta(mu30, 3, 0), eta(mu03, 0, 3), eta(mu21, 2, 1), eta(mu12, 1, 2)
    hu1 = e20 + e02
    hu2 = (e20 - e02) ** 2 + 4 * e11 ** 2
    hu3 = (e30 - 3 * e12) ** 2 + (3 * e21 - e03) ** 2
    hu4 = (e30 + e12) ** 2 + (e21 + e03) ** 2

    f[38] = area / (W * H)
    f[39] = math.sqrt(area / (W * H))
    f[40:44] = [x0 / W, y0 / H, x1 / W, y1 / H]
    f[44] = math.log(bw / bh)
    f[45] = area / (bw * bh)
    f[46] = (cx + 0.5) / W
    f[47] = (cy + 0.5) / H
    f[48] = math.sqrt(l2 / l1)
    f[49] = area / (4 * math.pi * math.sqrt(l1 * l2))
    f[50] = perim / math.sqrt(area)
    f[51] = holes / (area + holes)
    f[52] = area / hull if hull > 0 else 1.0
    f[53] = math.log(hu1 + 1e-9)
    f[54] = math.log(hu2 + 1e-9)
    f[55] = math.log(hu3 + 1e-9)
    f[56] = math.log(hu4 + 1e-9)
    f[57:] = _radial_features(dx, dy, area)
    return f.astype(np.float32)


def _radial_features(dx, dy, area):
    """RADIAL_HARMONICS DFT magnitudes, coefficient of variation and fill of the radial profile.

    dx, dy: pixel offsets from the centroid (pixel indices; the +0.5 of pixel centres cancels).
    """
    rad = np.sqrt(dx * dx + dy * dy)
    ang = np.arctan2(dy, dx)  # [-pi, pi]
    b = np.minimum(((ang + math.pi) * (RADIAL_BINS / (2 * math.pi))).astype(np.int64), RADIAL_BINS - 1)
    rmax = np.zeros(RADIAL_BINS)
    np.maximum.at(rmax, b, rad)
    out = np.zeros(RADIAL_HARMONICS + 2)
    m = rmax.mean()
    if m <= 0:
        return out
    r = rmax / m
    j = np.arange(RADIAL_BINS)
    for k in range(1, RADIAL_HARMONICS + 1):
        ph = 2 * math.pi * k * j / RADIAL_BINS
        out[k - 1] = math.hypot(float((r * np.cos(ph)).sum()), float((r * np.sin(ph)).sum())) / RADIAL_BINS
    out[RADIAL_HARMONICS] = r.std()
    # Pixels over the area of the profile's polygon-ish disc: low for spiky or hollow shapes.
    out[RADIAL_HARMONICS + 1] = area / (math.pi * float((rmax * rmax).mean()) + 1.0)
    return out

"""Cartoon faces for the synthetic twins: who a subject looks like, and how an expression
moves their brows, eyes, nose and mouth.

Why procedural cartoons: they need no data, no weights and no network, draw in a few
milliseconds at any size, and carry exactly the cues the paper's classes differ by (raised
brows and an open mouth for surprise, an upturned mouth for happiness, ...). Each subject has
their own face shape, tone, feature placement, resting face and way of expressing; about one
in five expresses weakly, so ambiguous, hard examples exist as in real data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

GRAIN = 4  # +- grey levels of sensor-like grain
WEAK_FRACTION = 0.2  # subjects whose apex is faint: the ambiguous, hard examples
Size = tuple[int, int]  # (width, height), as PIL
RGB = tuple[int, int, int]
Ink = Callable[[RGB], "int | RGB"]  # a colour as the image's mode takes it (grey level or RGB)

# Expression parameters; the neutral face is all defaults. Units are fractions of the face.
NEUTRAL = {
    "brow_raise": 0.0,  # whole brow up (+) / down (-)
    "brow_inner": 0.0,  # inner brow end up (+, sadness/fear) / down and in (-, anger)
    "eye_open": 1.0,  # eye height multiplier
    "mouth_curve": 0.0,  # corners up (+, smile) / down (-)
    "mouth_open": 0.0,  # jaw drop
    "mouth_width": 1.0,  # mouth width multiplier (stretched > 1, pursed < 1)
    "mouth_asym": 0.0,  # one corner up (contempt)
    "nose_wrinkle": 0.0,  # wrinkles across the nose (disgust)
    "lip_raise": 0.0,  # upper lip raised (disgust)
    "lips_press": 0.0,  # lips pressed thin and dark (anger)
}
APEX = {
    "anger": {
        "brow_raise": -0.7,
        "brow_inner": -1.3,
        "eye_open": 0.7,
        "mouth_width": 0.75,
        "lips_press": 1.0,
        "mouth_curve": -0.2,
    },
    "contempt": {"mouth_asym": 1.2, "eye_open": 0.9, "mouth_width": 0.95},
    "disgust": {
        "brow_raise": -0.4,
        "brow_inner": -0.6,
        "eye_open": 0.6,
        "nose_wrinkle": 1.0,
        "lip_raise": 1.0,
        "mouth_curve": -0.5,
        "mouth_width": 0.9,
    },
    "fear": {
        "brow_raise": 0.8,
        "brow_inner": 0.9,
        "eye_open": 1.55,
        "mouth_width": 1.3,
        "mouth_open": 0.45,
        "mouth_curve": -0.4,
    },
    "happy": {"mouth_curve": 1.3, "mouth_width": 1.3, "mouth_open": 0.35, "eye_open": 0.75},
    "sadness": {
        "brow_inner": 1.3,
        "brow_raise": 0.1,
        "eye_open": 0.8,
        "mouth_curve": -1.0,
        "mouth_width": 0.9,
    },
    "surprise": {"brow_raise": 1.3, "eye_open": 1.65, "mouth_open": 1.6, "mouth_width": 0.7},
}
APEX["happiness"] = APEX["happy"]


@dataclass(frozen=True)
class Look:
    """A subject's fixed appearance (fractions of the image / of the face)."""

    cx: float
    cy: float
    half_h: float  # face half-height / image height
    aspect: float  # face half-width / half-height
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    cloth: tuple[int, int, int]
    bg: tuple[tuple[int, int, int], tuple[int, int, int]]
    hair_style: int  # 0 cap, 1 fringe, 2 bald
    roll: float  # head tilt, degrees
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_h: float
    brow_gap: float
    nose_len: float
    mouth_y: float
    mouth_w: float
    strength: float  # apex intensity
    resting: dict[str, float]  # idiosyncratic neutral face (e.g. a slightly sad mouth)


def random_look(rng: np.random.Generator, colour: bool) -> Look:
    """Draw one subject's appearance."""
    u = rng.uniform
    if colour:
        tone = u(0.35, 1.0)
        skin = _rgb(140 + 100 * tone, 95 + 95 * tone, 70 + 85 * tone)
        hair = _rgb(*(u(15, 110) * np.array([1.0, u(0.7, 0.9), u(0.5, 0.8)])))
        cloth = _rgb(*rng.integers(20, 200, 3))
        bg1, bg2 = (_mix(_rgb(*rng.integers(40, 230, 3)), (110, 110, 110), 0.4) for _ in "ab")
        bg = (bg1, bg2)
    else:
        s, h = u(130, 215), u(15, 90)
        skin, hair, cloth = _rgb(s, s, s), _rgb(h, h, h), _rgb(*[u(20, 200)] * 3)
        b1, b2 = u(40, 120), u(40, 120)
        bg = (_rgb(b1, b1, b1), _rgb(b2, b2, b2))
    resting = {
        "mouth_curve": rng.normal(0, 0.15),
        "brow_inner": rng.normal(0, 0.15),
        "eye_open": rng.normal(0, 0.07),
    }
    weak = rng.random() < WEAK_FRACTION
    return Look(
        cx=0.5 + u(-0.05, 0.05),
        cy=0.47 + u(-0.03, 0.03),
        half_h=u(0.33, 0.39),
        aspect=u(0.72, 0.84),
        skin=skin,
        hair=hair,
        cloth=cloth,
        bg=bg,
        hair_style=int(rng.integers(0, 3)),
        roll=u(-4.0, 4.0),
        eye_dx=u(0.36, 0.44),
        eye_y=u(-0.16, -0.06),
        eye_w=u(0.17, 0.22),
        eye_h=u(0.07, 0.1),
        brow_gap=u(0.15, 0.2),
        nose_len=u(0.3, 0.38),
        mouth_y=u(0.48, 0.56),
        mouth_w=u(0.3, 0.38),
        strength=u(0.3, 0.5) if weak else u(0.8, 1.0),
        resting=resting,
    )


def expression_at(emotion: str, t: float, look: Look, quirk: dict[str, float]) -> dict[str, float]:
    """Expression parameters at intensity `t` in [0, 1] (0 neutral, 1 this subject's apex)."""
    apex = APEX[emotion]
    params = {}
    for key, neutral in NEUTRAL.items():
        target = apex.get(key, neutral) - neutral + quirk.get(key, 0.0)
        params[key] = neutral + look.resting.get(key, 0.0) + t * look.strength * target
    return params


def random_quirk(rng: np.random.Generator) -> dict[str, float]:
    """How one subject's version of an expression departs from the textbook one."""
    return {key: rng.normal(0, 0.12) for key in NEUTRAL}


def draw_face(
    size: Size,
    mode: str,
    look: Look,
    params: dict[str, float],
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0),
    background: Image.Image | None = None,
    grain: Image.Image | None = None,
    brightness: int = 0,
) -> Image.Image:
    """One frame: background gradient, shoulders, head, features, then sensor-like grain.

    `jitter` is (dx, dy, scale, roll degrees) of the head; `background` (the subject's,
    cached by the caller) and `grain` (values 0..2*GRAIN, same mode) are built when absent.
    Drawn at the target size directly: drawing is cheap, resampling is not.
    """
    width, height = size
    image = (background if background is not None else _background(size, mode, look.bg)).copy()
    draw = ImageDraw.Draw(image)
    ink: Ink = (
        (lambda c: c)
        if mode == "RGB"
        else (lambda c: round(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]))
    )
    dx, dy, scale, roll = jitter
    b = look.half_h * height * scale
    head = _Head((look.cx + dx) * width, (look.cy + dy) * height, b * look.aspect, b, roll)
    line = max(1, round(b * 0.035))
    skin, shade = look.skin, _mix(look.skin, (0, 0, 0), 0.25)
    # body and head
    draw.polygon(head.ellipse(0, 2.0, 2.3, 0.95), fill=ink(look.cloth))
    draw.polygon(head.poly([(-0.45, 0.5), (0.45, 0.5), (0.5, 1.3), (-0.5, 1.3)]), fill=ink(shade))
    if look.hair_style != 2:
        draw.polygon(head.ellipse(0, -0.12, 1.1, 1.0), fill=ink(look.hair))
    for side in (-1, 1):
        draw.polygon(head.ellipse(side * 0.98, -0.02, 0.12, 0.2, 12), fill=ink(shade))
    draw.polygon(head.ellipse(0, 0, 1, 1), fill=ink(skin))
    if look.hair_style == 0:
        draw.polygon(head.cap(-0.78), fill=ink(look.hair))
    elif look.hair_style == 1:
        draw.polygon(head.cap(-0.6), fill=ink(look.hair))
    _draw_brows(draw, head, look, params, ink(_mix(look.hair, (0, 0, 0), 0.3)), line * 2)
    _draw_eyes(draw, head, look, params, ink)
    _draw_nose(draw, head, look, params, ink(_mix(skin, (0, 0, 0), 0.45)), line)
    _draw_mouth(draw, head, look, params, ink, line)
    if grain is None:
        grain = _grain_pool(size, mode, 0, count=1)[0]
    return ImageChops.add(image, grain, 1.0, brightness - GRAIN)


class _Head:
    """Face coordinates (u across, v down, both -1..1 over the face ellipse) to pixels."""

    def __init__(self, cx: float, cy: float, a: float, b: float, roll_deg: float) -> None:
        self.cx, self.cy, self.a, self.b = cx, cy, a, b
        self.cos, self.sin = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))

    def pt(self, u: float, v: float) -> tuple[float, float]:
        x, y = u * self.a, v * self.b
        return (self.cx + x * self.cos - y * self.sin, self.cy + x * self.sin + y * self.cos)

    def poly(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.pt(u, v) for u, v in points]

    def ellipse(
        self, u: float, v: float, ru: float, rv: float, n: int = 32
    ) -> list[tuple[float, float]]:
        steps = [2 * math.pi * i / n for i in range(n)]
        return self.poly([(u + ru * math.cos(s), v + rv * math.sin(s)) for s in steps])

    def cap(self, v_edge: float, n: int = 20) -> list[tuple[float, float]]:
        """The part of the face ellipse above v = v_edge (hair over the forehead)."""
        edge = math.asin(min(max(-v_edge, 0.0), 1.0))
        lo, hi = math.pi + edge, 2 * math.pi - edge
        steps = [lo + (hi - lo) * i / n for i in range(n + 1)]
        return self.poly([(math.cos(s), math.sin(s)) for s in steps])


def _draw_brows(
    draw: ImageDraw.ImageDraw,
    head: _Head,
    look: Look,
    p: dict[str, float],
    colour: int | RGB,
    width: int,
) -> None:
    base = look.eye_y - look.brow_gap - 0.08 * p["brow_raise"]
    inward = 0.05 * max(-p["brow_inner"], 0.0)
    for side in (-1, 1):
        inner_u = side * (look.eye_dx - look.eye_w * 0.9 - inward)
        outer_u = side * (look.eye_dx + look.eye_w * 1.15)
        inner_v = base - 0.07 * p["brow_inner"]
        outer_v = base + 0.02 - 0.02 * p["brow_inner"]
        mid = ((inner_u + outer_u) / 2, (inner_v + outer_v) / 2 - 0.035)
        draw.line(
            head.poly([(inner_u, inner_v), mid, (outer_u, outer_v)]),
            fill=colour,
            width=width,
            joint="curve",
        )
    if p["brow_inner"] < -0.5:  # frown lines between the brows
        for side in (-1, 1):
            top = base - 0.07 * p["brow_inner"]
            draw.line(
                head.poly([(side * 0.05, top - 0.02), (side * 0.06, top + 0.1)]),
                fill=colour,
                width=max(1, width // 2),
            )


def _draw_eyes(
    draw: ImageDraw.ImageDraw, head: _Head, look: Look, p: dict[str, float], ink: Ink
) -> None:
    open_h = look.eye_h * max(p["eye_open"], 0.15)
    for side in (-1, 1):
        u, v = side * look.eye_dx, look.eye_y
        draw.polygon(head.ellipse(u, v, look.eye_w, open_h, 20), fill=ink((235, 235, 230)))
        radius = min(open_h * head.b, look.eye_w * head.a * 0.42)
        x, y = head.pt(u, v)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink((60, 45, 35)))
        r = radius * 0.45
        draw.ellipse((x - r, y - r, x + r, y + r), fill=ink((10, 10, 10)))
        lid = [
            (u + look.eye_w * math.cos(s), v - open_h * math.sin(s))
            for s in np.linspace(0, math.pi, 9)
        ]
        draw.line(head.poly(lid), fill=ink((25, 20, 20)), width=max(1, round(head.b * 0.025)))


def _draw_nose(
    draw: ImageDraw.ImageDraw,
    head: _Head,
    look: Look,
    p: dict[str, float],
    colour: int | RGB,
    width: int,
) -> None:
    top, tip = look.eye_y + 0.08, look.eye_y + look.nose_len
    draw.line(head.poly([(0.0, top), (0.06, tip), (0.0, tip + 0.04)]), fill=colour, width=width)
    for side in (-1, 1):
        draw.polygon(head.ellipse(side * 0.08, tip + 0.03, 0.05, 0.025, 10), fill=colour)
    if p["nose_wrinkle"] > 0.25:
        w = max(1, round(width * min(p["nose_wrinkle"], 1.2) * 1.5))
        for k in range(3):
            v = top + 0.05 + 0.04 * k
            draw.line(head.poly([(-0.09, v), (0.09, v)]), fill=colour, width=w)
        for side in (-1, 1):  # deepened folds beside the nose
            draw.line(
                head.poly([(side * 0.13, tip), (side * 0.25, tip + 0.14)]), fill=colour, width=w
            )


def _draw_mouth(
    draw: ImageDraw.ImageDraw,
    head: _Head,
    look: Look,
    p: dict[str, float],
    ink: Ink,
    width: int,
) -> None:
    half = look.mouth_w * max(p["mouth_width"], 0.3)
    curve, asym = 0.08 * p["mouth_curve"], 0.1 * p["mouth_asym"]
    xs = np.linspace(-1, 1, 15)
    centre = [look.mouth_y - curve * (x * x - 0.3) - asym * max(x, 0.0) ** 2 for x in xs]
    up = 0.04 * max(p["mouth_open"], 0.0) + 0.07 * max(p["lip_raise"], 0.0)
    down = 0.12 * max(p["mouth_open"], 0.0) + 0.02 * max(p["lip_raise"], 0.0)
    lip = _mix(look.skin, (70, 20, 25), 0.5)
    if up + down > 0.03:
        upper = [(x * half, c - up * (1 - x * x)) for x, c in zip(xs, centre, strict=True)]
        lower = [(x * half, c + down * (1 - x * x)) for x, c in zip(xs, centre, strict=True)]
        draw.polygon(head.poly(upper + lower[::-1]), fill=ink((35, 15, 15)))
        if p["mouth_curve"] > 0.5:  # teeth in a smile
            teeth = [(x, v + 0.35 * (lv - v)) for (x, v), (_, lv) in zip(upper, lower, strict=True)]
            draw.polygon(head.poly(upper + teeth[::-1]), fill=ink((235, 235, 225)))
        draw.line(head.poly(upper), fill=ink(lip), width=width * 2)
        draw.line(head.poly(lower), fill=ink(lip), width=width * 2)
    else:
        press = min(max(p["lips_press"], 0.0), 1.0)
        colour = _mix(lip, (20, 10, 10), 0.6 * press)
        draw.line(
            head.poly([(x * half, c) for x, c in zip(xs, centre, strict=True)]),
            fill=ink(colour),
            width=round(width * (2 + press)),
        )
    if p["mouth_curve"] > 0.6:  # smile folds from the nose wings to the mouth corners
        fold = ink(_mix(look.skin, (0, 0, 0), 0.3))
        for side in (-1, 1):
            corner = centre[-1 if side > 0 else 0]
            draw.line(
                head.poly(
                    [
                        (side * 0.2, look.eye_y + look.nose_len + 0.08),
                        (side * (half + 0.07), corner - 0.01),
                    ]
                ),
                fill=fold,
                width=width,
            )


def _background(size: Size, mode: str, colours: tuple[RGB, RGB]) -> Image.Image:
    width, height = size
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    a, b = np.array(colours[0], np.float32), np.array(colours[1], np.float32)
    row = (a + (b - a) * ramp).astype(np.uint8)
    image = Image.fromarray(np.repeat(row, height, axis=0), "RGB")
    return image if mode == "RGB" else image.convert("L")


def _rgb(r: float, g: float, b: float) -> tuple[int, int, int]:
    return (int(np.clip(r, 0, 255)), int(np.clip(g, 0, 255)), int(np.clip(b, 0, 255)))


def _mix(c: RGB, d: RGB, w: float) -> RGB:
    return _rgb(*(c[i] * (1 - w) + d[i] * w for i in range(3)))


def sequence_frames(
    rng: np.random.Generator, size: Size, mode: str, look: Look, emotion: str, n: int
) -> Iterator[Image.Image]:
    """The frames of one sequence, neutral (first) to apex (last), with head jitter."""
    quirk = random_quirk(rng)
    background = _background(size, mode, look.bg)
    grains = _grain_pool(size, mode, int(rng.integers(1 << 30)))
    for i in range(n):
        t = (i / (n - 1)) ** 0.8 if n > 1 else 1.0
        params = expression_at(emotion, t, look, quirk)
        jitter = (
            rng.normal(0, 0.006),
            rng.normal(0, 0.006),
            1 + rng.normal(0, 0.012),
            look.roll + rng.normal(0, 0.8),
        )
        grain = grains[int(rng.integers(len(grains)))]
        brightness = int(rng.normal(0, 3))
        yield draw_face(size, mode, look, params, jitter, background, grain, brightness)


def _grain_pool(size: Size, mode: str, seed: int, count: int = 4) -> list[Image.Image]:
    """A few blocky grain images (values 0..2*GRAIN): coarse blocks keep PNG encoding fast
    (per-pixel noise makes zlib several times slower) and still look like a sensor."""
    width, height = size
    block = max(1, width // 160)
    rng = np.random.default_rng([seed, width, height])
    pool = []
    for _ in range(count):
        small = rng.integers(0, 2 * GRAIN + 1, (height // block + 1, width // block + 1))
        grain = Image.fromarray(small.astype(np.uint8), "L").resize(
            (small.shape[1] * block, small.shape[0] * block), Image.Resampling.NEAREST
        )
        grain = grain.crop((0, 0, width, height))
        pool.append(grain if mode == "L" else Image.merge("RGB", [grain] * 3))
    return pool

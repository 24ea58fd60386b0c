"""The embedded demo mixture: four small synthetic detection datasets, and four more.

The Universal Object Detection Benchmark mixes datasets with disparate domains, divergent
label sets and very different amounts of data. ``make demo`` must show DAMEX on a 2-core CPU
without internet, so this module renders a miniature of that situation instead of
downloading it:

========  =========================================  ========================  ================
name      domain                                     classes                   train / val / test
========  =========================================  ========================  ================
photo     shaded silhouettes on textured colour      person, car, dog          250 / 60 / 60
          gradients, 112x144, 1-3 objects
sketch    jittered ink outlines on paper, 128x128,   person, car, house, tree  250 / 60 / 60
          1-4 objects
aerial    top-down terrain, 4-10 small rotated       plane, ship, vehicle      250 / 60 / 60
          objects (boxes 9-34 px), 128x128
scan      grey CT-like slices, 1-3 faint blobs,      lesion                    40 / 60 / 60
          limited data, 128x128
========  =========================================  ========================  ================

Four more (:data:`EXTRA_DEMO_DATASETS`) make mixtures of up to eight unlike datasets; any
subset of the eight is generated with ``generate_demo_mixture(..., datasets=[...])``:

==========  =======================================  ========================  ================
name        domain                                   classes                   train / val / test
==========  =======================================  ========================  ================
thermal     grey infrared: warm blurred bodies on    person, car, dog          250 / 60 / 60
            cold sky and cool ground, sensor
            stripes, 128x128, 1-3 objects
comic       flat saturated fills outlined in thick   person, dog, house, tree  250 / 60 / 60
            ink, halftone-dot skies, 128x128,
            1-3 objects
microscopy  dark field: glowing membranes, nuclei,   cell, bacterium, yeast    250 / 60 / 60
            shot noise, 3-8 small objects at any
            orientation, 128x128
underwater  blue depth gradient, light shafts,       fish, jellyfish, person   250 / 60 / 60
            particles, red lost with distance,
            vignetting, 128x128, 1-4 objects
==========  =======================================  ========================  ================

Three splits: ``train`` to learn, ``val`` to choose (configurations, samplers, learning rates,
checkpoints), ``test`` to report what was chosen; nothing is ever selected on ``test``.

``person`` and ``car`` are shared by ``photo`` and ``sketch`` (same geometry, different
rendering), the way VOC, Clipart and Comic share class names in UODB. Among the extra
datasets, ``thermal`` has ``photo``'s names, ``comic`` mixes ``photo``'s and ``sketch``'s,
``underwater`` shares ``person`` and adds its own, and ``microscopy``'s are all its own.

Layout written by :func:`generate_demo_mixture`::

    out_dir/manifest.json
    out_dir/<name>/annotations/<split>.json
    out_dir/<name>/images/<split>/<name>_<split>_<index:04d>.png

Each annotation file is COCO: ``file_name`` is relative to the image prefix
``out_dir/<name>/images/<split>/``; category ids are ``1..K`` in class order; boxes are
``[x, y, w, h]`` in pixel-edge coordinates and are the exact bounds of the visible pixels an
object painted (anti-aliased edges included), so a box is never looser or tighter than the
drawing; ``area`` is the box area, as in box-only datasets.

Generation is deterministic: every (dataset, split) draws from its own PCG64 generator seeded
from ``(seed, name, split)``, so the same seed gives byte-identical files, a smaller split
is a prefix of a larger one, adding a split (``test``, version 2) left the others unchanged,
and a dataset's files do not depend on which other datasets are generated with it.
"""
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

#: Bump whenever the rendering, the specs or the manifest change, so cached mixtures are
#: regenerated. 3: the manifest names the datasets chosen, in order.
DEMO_MIXTURE_VERSION = 3
SPLITS = ('train', 'val', 'test')
MANIFEST_NAME = 'manifest.json'


@dataclass(frozen=True)
class DemoDatasetSpec:
    """What one demo dataset looks like; its ``name`` also selects its renderer.

    Attributes:
        name: Dataset name, used for directories, file names and the renderer.
        classes: Class names in category-id order (ids ``1..K``).
        image_size: ``(height, width)`` of every image.
        num_train: Default number of training images.
        num_val: Default number of validation images.
        num_test: Default number of test images.
        objects_per_image: Inclusive ``(min, max)`` number of objects per image.
        object_size: ``(min, max)`` of ``sqrt(w * h)`` of an object's nominal box, pixels.
        max_iou: Largest IoU allowed between two objects' boxes; 0 keeps objects apart.
    """

    name: str
    classes: Tuple[str, ...]
    image_size: Tuple[int, int]
    num_train: int
    num_val: int
    num_test: int
    objects_per_image: Tuple[int, int]
    object_size: Tuple[float, float]
    max_iou: float


DEMO_DATASETS: Tuple[DemoDatasetSpec, ...] = (
    DemoDatasetSpec('photo', ('person', 'car', 'dog'), (112, 144), 250, 60, 60, (1, 3),
                    (30.0, 54.0), 0.25),
    DemoDatasetSpec('sketch', ('person', 'car', 'house', 'tree'), (128, 128), 250, 60, 60, (1, 4),
                    (30.0, 56.0), 0.0),
    DemoDatasetSpec('aerial', ('plane', 'ship', 'vehicle'), (128, 128), 250, 60, 60, (4, 10),
                    (12.0, 19.0), 0.0),
    DemoDatasetSpec('scan', ('lesion', ), (128, 128), 40, 60, 60, (1, 3), (10.0, 20.0), 0.0),
)

#: Four more domains, unlike the default ones and each other, for mixtures of up to eight
#: datasets; ``generate_demo_mixture(..., datasets=...)`` picks any of either tuple.
EXTRA_DEMO_DATASETS: Tuple[DemoDatasetSpec, ...] = (
    DemoDatasetSpec('thermal', ('person', 'car', 'dog'), (128, 128), 250, 60, 60, (1, 3),
                    (28.0, 50.0), 0.2),
    DemoDatasetSpec('comic', ('person', 'dog', 'house', 'tree'), (128, 128), 250, 60, 60,
                    (1, 3), (32.0, 54.0), 0.0),
    DemoDatasetSpec('microscopy', ('cell', 'bacterium', 'yeast'), (128, 128), 250, 60, 60,
                    (3, 8), (13.0, 22.0), 0.0),
    DemoDatasetSpec('underwater', ('fish', 'jellyfish', 'person'), (128, 128), 250, 60, 60,
                    (1, 4), (24.0, 44.0), 0.0),
)

# --------------------------------------------------------------------------------------------
# Shapes: each class is a list of parts in unit-box coordinates (x right, y down), rendered
# filled (photo, aerial) or as outlines (sketch). Sharing geometry between domains makes a
# shared class name mean the same object.
# --------------------------------------------------------------------------------------------


class _Part(NamedTuple):
    points: np.ndarray  # (N, 2) unit-box coordinates
    closed: bool  # polygon (True) or open stroke (False)
    width: float  # stroke width as a fraction of the object size; unused for polygons
    tone: str  # 'body', 'dark', 'light' or 'skin': the domain picks the colour


class _Shape(NamedTuple):
    parts: Tuple[_Part, ...]
    aspect: float  # nominal width / height
    relative_size: float  # scales the dataset's object_size for this class


def _polygon(points: Sequence[Tuple[float, float]], tone: str = 'body') -> _Part:
    return _Part(np.asarray(points, dtype=np.float64), True, 0.0, tone)


def _ellipse(cx: float, cy: float, rx: float, ry: float, tone: str = 'body') -> _Part:
    angles = np.linspace(0.0, 2.0 * np.pi, 28, endpoint=False)
    return _Part(np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1), True,
                 0.0, tone)


def _stroke(points: Sequence[Tuple[float, float]], width: float,
            tone: str = 'body') -> _Part:
    return _Part(np.asarray(points, dtype=np.float64), False, width, tone)


_SHAPES: Dict[str, _Shape] = {
    'person': _Shape((
        _stroke([(0.38, 0.55), (0.32, 0.99)], 0.11, 'dark'),
        _stroke([(0.62, 0.55), (0.68, 0.99)], 0.11, 'dark'),
        _stroke([(0.28, 0.26), (0.07, 0.55)], 0.08),
        _stroke([(0.72, 0.26), (0.93, 0.55)], 0.08),
        _polygon([(0.24, 0.23), (0.76, 0.23), (0.7, 0.6), (0.3, 0.6)]),
        _ellipse(0.5, 0.11, 0.2, 0.09, 'skin'),
    ), aspect=0.42, relative_size=1.0),
    'car': _Shape((
        _polygon([(0.2, 0.48), (0.33, 0.1), (0.7, 0.1), (0.84, 0.48)]),
        _polygon([(0.28, 0.45), (0.37, 0.18), (0.66, 0.18), (0.75, 0.45)], 'light'),
        _polygon([(0.0, 0.5), (0.06, 0.42), (0.94, 0.42), (1.0, 0.52), (1.0, 0.8), (0.0, 0.8)]),
        _ellipse(0.24, 0.8, 0.1, 0.2, 'dark'),
        _ellipse(0.76, 0.8, 0.1, 0.2, 'dark'),
    ), aspect=2.0, relative_size=1.0),
    'dog': _Shape((
        _stroke([(0.16, 0.42), (0.02, 0.16)], 0.07),
        _stroke([(0.24, 0.6), (0.22, 1.0)], 0.09),
        _stroke([(0.36, 0.62), (0.36, 1.0)], 0.09),
        _stroke([(0.58, 0.62), (0.58, 1.0)], 0.09),
        _stroke([(0.68, 0.6), (0.7, 1.0)], 0.09),
        _ellipse(0.45, 0.5, 0.32, 0.2),
        _ellipse(0.8, 0.3, 0.12, 0.16),
        _polygon([(0.86, 0.32), (1.0, 0.36), (1.0, 0.46), (0.86, 0.46)]),
        _polygon([(0.72, 0.2), (0.77, 0.0), (0.82, 0.2)], 'dark'),
    ), aspect=1.4, relative_size=1.0),
    'house': _Shape((
        _polygon([(0.12, 0.45), (0.88, 0.45), (0.88, 1.0), (0.12, 1.0)]),
        _polygon([(0.0, 0.48), (0.5, 0.0), (1.0, 0.48)], 'dark'),
        _polygon([(0.42, 0.7), (0.58, 0.7), (0.58, 1.0), (0.42, 1.0)], 'dark'),
        _polygon([(0.2, 0.58), (0.34, 0.58), (0.34, 0.72), (0.2, 0.72)], 'light'),
        _polygon([(0.66, 0.58), (0.8, 0.58), (0.8, 0.72), (0.66, 0.72)], 'light'),
    ), aspect=1.0, relative_size=1.0),
    'tree': _Shape((
        _polygon([(0.42, 0.5), (0.58, 0.5), (0.6, 1.0), (0.4, 1.0)], 'dark'),
        _ellipse(0.3, 0.42, 0.3, 0.2),
        _ellipse(0.7, 0.42, 0.3, 0.2),
        _ellipse(0.5, 0.26, 0.34, 0.26),
    ), aspect=0.75, relative_size=1.1),
    'plane': _Shape((
        _polygon([(0.5, 0.3), (1.0, 0.56), (1.0, 0.64), (0.5, 0.52), (0.0, 0.64), (0.0, 0.56)]),
        _polygon([(0.5, 0.84), (0.74, 0.95), (0.74, 1.0), (0.26, 1.0), (0.26, 0.95)]),
        _ellipse(0.5, 0.5, 0.08, 0.5),
    ), aspect=1.0, relative_size=1.25),
    'ship': _Shape((
        _polygon([(0.5, 0.0), (1.0, 0.28), (1.0, 1.0), (0.0, 1.0), (0.0, 0.28)]),
        _polygon([(0.25, 0.55), (0.75, 0.55), (0.75, 0.85), (0.25, 0.85)], 'light'),
    ), aspect=0.4, relative_size=1.0),
    'vehicle': _Shape((
        _polygon([(0.1, 0.0), (0.9, 0.0), (1.0, 0.1), (1.0, 0.9), (0.9, 1.0), (0.1, 1.0),
                  (0.0, 0.9), (0.0, 0.1)]),
        _polygon([(0.12, 0.2), (0.88, 0.2), (0.85, 0.36), (0.15, 0.36)], 'dark'),
        _polygon([(0.15, 0.8), (0.85, 0.8), (0.88, 0.9), (0.12, 0.9)], 'dark'),
    ), aspect=0.5, relative_size=0.8),
    # Microscopy: a bright membrane around dim cytoplasm, as dark-field shows cells.
    'cell': _Shape((
        _ellipse(0.5, 0.5, 0.5, 0.5, 'light'),
        _ellipse(0.5, 0.5, 0.4, 0.4),
        _ellipse(0.56, 0.46, 0.17, 0.15, 'dark'),
    ), aspect=1.0, relative_size=1.15),
    'bacterium': _Shape((
        _ellipse(0.5, 0.5, 0.5, 0.5, 'light'),
        _ellipse(0.5, 0.5, 0.38, 0.2),
    ), aspect=3.2, relative_size=0.75),
    'yeast': _Shape((
        _ellipse(0.38, 0.58, 0.38, 0.42, 'light'),
        _ellipse(0.38, 0.58, 0.29, 0.32),
        _ellipse(0.8, 0.28, 0.2, 0.22, 'light'),
        _ellipse(0.8, 0.28, 0.12, 0.13),
    ), aspect=1.15, relative_size=1.0),
    # Underwater.
    'fish': _Shape((
        _polygon([(0.68, 0.5), (1.0, 0.12), (0.94, 0.5), (1.0, 0.88)], 'dark'),
        _polygon([(0.28, 0.26), (0.42, 0.02), (0.6, 0.3)], 'dark'),
        _ellipse(0.4, 0.5, 0.38, 0.3),
        _ellipse(0.18, 0.44, 0.05, 0.07, 'light'),
    ), aspect=1.8, relative_size=0.9),
    'jellyfish': _Shape((
        _stroke([(0.25, 0.4), (0.18, 0.62), (0.27, 0.8), (0.2, 1.0)], 0.05),
        _stroke([(0.45, 0.4), (0.5, 0.6), (0.42, 0.78), (0.48, 0.98)], 0.05),
        _stroke([(0.62, 0.4), (0.56, 0.62), (0.66, 0.8), (0.6, 1.0)], 0.05),
        _stroke([(0.8, 0.4), (0.86, 0.6), (0.78, 0.82)], 0.05),
        _polygon([(0.5 - 0.5 * np.cos(t), 0.45 - 0.45 * np.sin(t))
                  for t in np.linspace(0.0, np.pi, 15)], 'light'),
        _polygon([(0.5 - 0.34 * np.cos(t), 0.45 - 0.3 * np.sin(t))
                  for t in np.linspace(0.0, np.pi, 11)]),
    ), aspect=0.75, relative_size=1.0),
}

# Polygon points are drawn with 4 fractional bits so anti-aliased edges sit sub-pixel.
_SUBPIXEL_BITS = 4
_SUBPIXEL_SCALE = float(1 << _SUBPIXEL_BITS)


def _to_cv_points(points: np.ndarray) -> np.ndarray:
    return np.round(points * _SUBPIXEL_SCALE).astype(np.int32)


def _place_shape(shape: _Shape, center: np.ndarray, size: float, angle: float,
                 flip: bool, aspect_jitter: float) -> List[np.ndarray]:
    """Map a shape's parts to pixel coordinates, one ``(N, 2)`` array per part."""
    aspect = shape.aspect * aspect_jitter
    extent = np.array([size * np.sqrt(aspect), size / np.sqrt(aspect)])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    placed = []
    for part in shape.parts:
        unit = part.points.copy()
        if flip:
            unit[:, 0] = 1.0 - unit[:, 0]
        placed.append(center + ((unit - 0.5) * extent) @ rotation.T)
    return placed


def _resample_outline(points: np.ndarray, closed: bool, spacing: float) -> np.ndarray:
    """Insert points every ``spacing`` pixels so per-point jitter wobbles like a hand."""
    path = np.concatenate([points, points[:1]]) if closed else points
    starts, offsets = path[:-1], np.diff(path, axis=0)
    steps = np.maximum(1, np.ceil(np.linalg.norm(offsets, axis=1) / spacing)).astype(int)
    segment = np.repeat(np.arange(len(starts)), steps)
    first_step = np.repeat(np.cumsum(steps) - steps, steps)
    fractions = (np.arange(steps.sum()) - first_step) / steps[segment]
    resampled = starts[segment] + fractions[:, None] * offsets[segment]
    return resampled if closed else np.concatenate([resampled, path[-1:]])


# --------------------------------------------------------------------------------------------
# Domains: each paints a background, proposes one object at a time (its coverage and its
# colours), and adds the final sensor noise. The shared loop in `_render_image` places them.
# --------------------------------------------------------------------------------------------


class _Proposal(NamedTuple):
    label: int
    alpha: np.ndarray  # (H, W) uint8 coverage of the pixels by the object
    # Returns the (H, W, C) float32 appearance, valid where alpha > 0. Deferred because most
    # proposals are rejected and colouring a whole image is the expensive part.
    paint: Callable[[np.random.Generator], np.ndarray]


class _Canvas(NamedTuple):
    image: np.ndarray  # (H, W, C) float32 in [0, 255], RGB or single channel
    allowed: Optional[np.ndarray]  # (H, W) bool where objects may lie; None means anywhere


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int,
                  channels: int = 1) -> np.ndarray:
    """Low-frequency noise of unit-ish amplitude: a coarse random grid upsampled cubically."""
    grid = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return noise.reshape(height, width, channels)


def _random_rgb(rng: np.random.Generator, saturation: Tuple[float, float],
                value: Tuple[float, float]) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255,
                      rng.uniform(*value) * 255]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


class _Domain:
    """How one dataset looks; `_render_image` calls these hooks in order."""

    def __init__(self, spec: DemoDatasetSpec):
        self.spec = spec

    def background(self, rng: np.random.Generator) -> _Canvas:
        """Paint the scene behind the objects and say where objects may go."""
        raise NotImplementedError

    def propose(self, rng: np.random.Generator, canvas: _Canvas) -> _Proposal:
        """Draw one candidate object; it is kept only if it respects the overlap rules."""
        raise NotImplementedError

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        """Add what the sensor adds over the whole image (noise); never moves edges."""
        raise NotImplementedError


class _ShapeDomain(_Domain):
    """A domain whose objects come from the shape library, sized and placed uniformly."""

    channels = 3
    rotate = False
    # None paints parts filled; a (min, max) range draws jittered outlines with one pen width
    # per object, the way a hand draws.
    pen_widths: Optional[Tuple[int, int]] = None
    outline_jitter = 0.45

    def propose(self, rng: np.random.Generator, canvas: _Canvas) -> _Proposal:
        height, width = self.spec.image_size
        label = int(rng.integers(len(self.spec.classes)))
        shape = _SHAPES[self.spec.classes[label]]
        size = rng.uniform(*self.spec.object_size) * shape.relative_size
        aspect_jitter = rng.uniform(0.85, 1.15)
        if self.rotate:
            angle = rng.uniform(0.0, 2.0 * np.pi)
            flip = False
        else:
            angle = rng.normal(0.0, 0.06)
            flip = bool(rng.integers(2))
        # Keep the nominal box inside the image: any rotation for rotating domains, else a
        # margin for the small tilt and the aspect jitter.
        half = 0.5 * size * np.array([np.sqrt(shape.aspect), 1 / np.sqrt(shape.aspect)])
        half = np.full(2, np.linalg.norm(half)) if self.rotate else half * 1.1
        center = np.array([rng.uniform(half[0], max(half[0], width - half[0])),
                           rng.uniform(half[1], max(half[1], height - half[1]))])
        parts = _place_shape(shape, center, size, angle, flip, aspect_jitter)
        tones = self.tone_colours(rng)
        pen_width = None if self.pen_widths is None else int(rng.integers(
            self.pen_widths[0], self.pen_widths[1] + 1))
        layers = []
        for part, points in zip(shape.parts, parts):
            layers += self.part_layers(rng, part, points, size, pen_width)

        def paint(rng: np.random.Generator) -> np.ndarray:
            colour = np.zeros((height, width, self.channels), np.float32)
            for layer_alpha, tone in layers:
                coverage = layer_alpha[..., None].astype(np.float32) / 255.0
                colour = colour * (1.0 - coverage) + tones[tone] * coverage
            return self.shade(rng, colour, center, size)

        return _Proposal(label, np.maximum.reduce([alpha for alpha, _ in layers]), paint)

    def part_layers(self, rng: np.random.Generator, part: _Part, points: np.ndarray,
                    size: float, pen_width: Optional[int]) -> List[Tuple[np.ndarray, str]]:
        """A part's ``(H, W)`` uint8 coverage layers, bottom first, each with its tone."""
        alpha = np.zeros(self.spec.image_size, np.uint8)
        self.draw_part(rng, alpha, part, points, size, pen_width)
        return [(alpha, part.tone)]

    def draw_part(self, rng: np.random.Generator, alpha: np.ndarray, part: _Part,
                  points: np.ndarray, size: float, pen_width: Optional[int]) -> None:
        """Paint a part's coverage into ``alpha``: filled, or outlined with ``pen_width``."""
        if pen_width is not None:
            outline = _resample_outline(points, part.closed, spacing=3.0)
            outline = outline + rng.normal(0.0, self.outline_jitter, outline.shape)
            cv2.polylines(alpha, [_to_cv_points(outline)], part.closed, 255, pen_width,
                          cv2.LINE_AA, _SUBPIXEL_BITS)
        elif part.closed:
            cv2.fillPoly(alpha, [_to_cv_points(points)], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
        else:
            thickness = max(1, int(round(part.width * size)))
            cv2.polylines(alpha, [_to_cv_points(points)], False, 255, thickness, cv2.LINE_AA,
                          _SUBPIXEL_BITS)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        """One object's colour for each tone its layers use ('body', 'dark', 'light',
        'skin', and any a domain's ``part_layers`` adds)."""
        raise NotImplementedError

    def shade(self, rng: np.random.Generator, colour: np.ndarray, center: np.ndarray,
              size: float) -> np.ndarray:
        """Light and texture an object's flat colours; flat by default."""
        return colour


class _PhotoDomain(_ShapeDomain):
    """Colour-gradient scenes with blurry clutter; objects shaded, textured, in any colour."""

    _SKIN_TONES = np.array([[241, 194, 160], [198, 134, 96], [141, 85, 54], [224, 172, 105]],
                           dtype=np.float32)

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        top, bottom = (_random_rgb(rng, (0.1, 0.5), (0.35, 0.9)) for _ in range(2))
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        image = top * (1 - ramp) + bottom * ramp + np.zeros((1, width, 1), np.float32)
        # Mostly brightness variation, a little colour: lighting rather than confetti.
        image += 20.0 * _smooth_noise(rng, height, width, 5) + 6.0 * _smooth_noise(
            rng, height, width, 8, 3)
        # Out-of-focus blobs: clutter that is not an object.
        for _ in range(int(rng.integers(1, 4))):
            blob = np.zeros((height, width), np.float32)
            cv2.ellipse(blob, (int(rng.integers(width)), int(rng.integers(height))),
                        (int(rng.integers(8, 30)), int(rng.integers(8, 30))),
                        float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            blob = cv2.GaussianBlur(blob, (0, 0), 6.0)[..., None]
            image = image * (1 - 0.6 * blob) + _random_rgb(rng, (0.2, 0.6),
                                                           (0.3, 0.9)) * 0.6 * blob
        return _Canvas(image, None)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        return {
            'body': _random_rgb(rng, (0.45, 1.0), (0.45, 0.95)),
            'dark': np.full(3, rng.uniform(25, 60), np.float32),
            'light': np.array([190, 215, 235], np.float32) * rng.uniform(0.85, 1.05),
            'skin': self._SKIN_TONES[rng.integers(len(self._SKIN_TONES))],
        }

    def shade(self, rng: np.random.Generator, colour: np.ndarray, center: np.ndarray,
              size: float) -> np.ndarray:
        # A light source from a random direction plus surface texture.
        height, width = colour.shape[:2]
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-6
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        along = ((xs - center[0]) * direction[0] + (ys - center[1]) * direction[1]) / size
        light = np.clip(1.0 + 0.6 * along, 0.55, 1.4)[..., None]
        texture = 10.0 * rng.standard_normal(colour.shape).astype(np.float32)
        return colour * light + texture

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        return image + rng.normal(0.0, 4.0, image.shape).astype(np.float32)


class _SketchDomain(_ShapeDomain):
    """Hand-drawn outlines: wobbly ink strokes of 1-2 px on slightly textured paper."""

    pen_widths = (1, 2)

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        paper = np.array([rng.uniform(236, 252), rng.uniform(232, 248), rng.uniform(215, 240)],
                         dtype=np.float32)
        return _Canvas(paper + 3.0 * _smooth_noise(rng, height, width, 12), None)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        ink = np.full(3, rng.uniform(15, 70), np.float32)
        return dict.fromkeys(('body', 'dark', 'light', 'skin'), ink)

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        return image + rng.normal(0.0, 2.0, image.shape).astype(np.float32)


class _AerialDomain(_ShapeDomain):
    """Top-down terrain (fields, roads) with small objects at any orientation."""

    rotate = True
    _GRASS = np.array([78, 112, 62], np.float32)
    _SOIL = np.array([140, 122, 88], np.float32)

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        terrain = _smooth_noise(rng, height, width, 5) + 0.5 * _smooth_noise(
            rng, height, width, 14)
        mix = 1.0 / (1.0 + np.exp(-2.0 * terrain))
        image = self._GRASS * (1 - mix) + self._SOIL * mix
        for _ in range(int(rng.integers(1, 4))):  # fields: straight-edged tinted patches
            field = np.zeros((height, width), np.uint8)
            box = ((float(rng.uniform(0, width)), float(rng.uniform(0, height))),
                   (float(rng.uniform(20, 60)), float(rng.uniform(20, 60))),
                   float(rng.uniform(0, 90)))
            cv2.fillPoly(field, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
            tint = rng.uniform(0.75, 1.2, 3).astype(np.float32)
            image = np.where(field[..., None] > 0, image * tint, image)
        for _ in range(int(rng.integers(0, 3))):  # roads across the image
            road = np.zeros((height, width), np.uint8)
            start = (int(rng.integers(width)), 0)
            end = (int(rng.integers(width)), height - 1)
            if rng.integers(2):
                start, end = (0, start[0]), (width - 1, end[0])
            cv2.line(road, start, end, 255, int(rng.integers(3, 6)), cv2.LINE_AA)
            coverage = road[..., None].astype(np.float32) / 255.0
            image = image * (1 - coverage) + rng.uniform(95, 130) * coverage
        return _Canvas(image, None)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        body = (np.full(3, rng.uniform(190, 245), np.float32)
                if rng.uniform() < 0.5 else _random_rgb(rng, (0.5, 1.0), (0.5, 0.95)))
        return {
            'body': body,
            'dark': np.full(3, rng.uniform(20, 50), np.float32),
            'light': np.full(3, rng.uniform(200, 250), np.float32),
            'skin': body,
        }

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        return image + rng.normal(0.0, 5.0, image.shape).astype(np.float32)


class _ScanDomain(_Domain):
    """CT-like slices: a bright body with organs and a spine; lesions are faint bright blobs
    that must lie inside the soft tissue."""

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        center = (int(width / 2 + rng.integers(-4, 5)), int(height / 2 + rng.integers(-3, 4)))
        axes = (int(rng.integers(50, 58)), int(rng.integers(38, 46)))
        body = np.zeros((height, width), np.uint8)
        cv2.ellipse(body, center, axes, 0, 0, 360, 1, -1)
        image = np.full((height, width), 12.0, np.float32)
        image[body > 0] = rng.uniform(100, 125)
        image += 10.0 * _smooth_noise(rng, height, width, 6)[..., 0] * body
        for side in (-1, 1):  # paired organs, darker than the tissue
            organ_center = (center[0] + side * int(rng.integers(18, 26)),
                            center[1] + int(rng.integers(-6, 8)))
            organ = np.zeros((height, width), np.float32)
            cv2.ellipse(organ, organ_center, (int(rng.integers(8, 13)), int(rng.integers(11, 16))),
                        float(rng.uniform(-30, 30)), 0, 360, 1.0, -1)
            image -= rng.uniform(25, 40) * organ
        spine = np.zeros((height, width), np.uint8)
        spine_center = (center[0], center[1] + axes[1] - int(rng.integers(10, 14)))
        cv2.circle(spine, spine_center, int(rng.integers(6, 9)), 1, -1)
        image[spine > 0] = rng.uniform(200, 230)
        image = cv2.GaussianBlur(image, (0, 0), 1.2)
        # Lesions stay clear of the body's edge and of the spine's neighbourhood.
        tissue = cv2.erode(body, np.ones((9, 9), np.uint8)) > 0
        tissue &= cv2.dilate(spine, np.ones((7, 7), np.uint8)) == 0
        return _Canvas(image[..., None], tissue)

    def propose(self, rng: np.random.Generator, canvas: _Canvas) -> _Proposal:
        height, width = self.spec.image_size
        diameter = rng.uniform(*self.spec.object_size)
        axes = diameter / 2 * np.array([rng.uniform(0.75, 1.25), 1.0])
        center = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        angle = rng.uniform(0, 2 * np.pi)
        unit_circle = _ellipse(0.0, 0.0, 1.0, 1.0).points
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        outline = center + (unit_circle * axes) @ rotation.T
        alpha = np.zeros((height, width), np.uint8)
        cv2.fillPoly(alpha, [_to_cv_points(outline)], 255, cv2.LINE_AA, _SUBPIXEL_BITS)

        def paint(rng: np.random.Generator) -> np.ndarray:
            # Brighter core, fading towards the rim: a blob, not a disc.
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
            local = np.stack([xs - center[0], ys - center[1]], axis=-1) @ rotation
            radius2 = (local[..., 0] / axes[0])**2 + (local[..., 1] / axes[1])**2
            contrast = rng.uniform(32, 55) * (1.0 - 0.45 * np.clip(radius2, 0, 1))
            return canvas.image + contrast[..., None].astype(np.float32)

        return _Proposal(0, alpha, paint)

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        return image + rng.normal(0.0, 6.0, image.shape).astype(np.float32)


class _ThermalDomain(_ShapeDomain):
    """Long-wave infrared: grey warm bodies against a cold sky and cool ground, edges blurred
    by the optics, vertical fixed-pattern stripes of the sensor."""

    channels = 1
    blur_sigma = 1.3  # pixels

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        horizon = rng.uniform(0.25, 0.55) * height
        rows = np.arange(height, dtype=np.float32)[:, None]
        # The ground warms towards the camera; the sky stays cold.
        nearness = np.clip((rows - horizon) / (height - horizon), 0.0, 1.0)
        ground = rng.uniform(60, 90) + 30.0 * nearness
        image = np.where(rows < horizon, rng.uniform(15, 40), ground) + np.zeros(
            (1, width), np.float32)
        image += 8.0 * _smooth_noise(rng, height, width, 6)[..., 0]
        # Sun-warmed stones, windows, exhausts: warm spots that are not objects.
        for _ in range(int(rng.integers(1, 4))):
            spot = np.zeros((height, width), np.float32)
            cv2.ellipse(spot, (int(rng.integers(width)), int(rng.integers(height))),
                        (int(rng.integers(3, 12)), int(rng.integers(3, 12))),
                        float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            image += rng.uniform(40, 90) * cv2.GaussianBlur(spot, (0, 0), 3.0)
        return _Canvas(cv2.GaussianBlur(image, (0, 0), 1.0)[..., None], None)

    def propose(self, rng: np.random.Generator, canvas: _Canvas) -> _Proposal:
        sharp = super().propose(rng, canvas)
        coverage = cv2.GaussianBlur(sharp.alpha.astype(np.float32) / 255.0, (0, 0),
                                    self.blur_sigma)

        def paint(rng: np.random.Generator) -> np.ndarray:
            # The sharp colour is premultiplied by its coverage (parts are painted over
            # black): blurring both and dividing fades the rim into the scene instead of
            # darkening it.
            colour = cv2.GaussianBlur(sharp.paint(rng)[..., 0], (0, 0), self.blur_sigma)
            return (colour / np.maximum(coverage, 1e-3))[..., None]

        return _Proposal(sharp.label, np.round(coverage * 255.0).astype(np.uint8), paint)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        body = rng.uniform(165, 210)
        return {
            'body': np.array([body], np.float32),
            'dark': np.array([body - rng.uniform(25, 50)], np.float32),  # clothes, fur
            'light': np.array([rng.uniform(45, 85)], np.float32),  # glass mirrors the sky
            'skin': np.array([rng.uniform(225, 250)], np.float32),
        }

    def shade(self, rng: np.random.Generator, colour: np.ndarray, center: np.ndarray,
              size: float) -> np.ndarray:
        # The core is warmer than the extremities.
        height, width = colour.shape[:2]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        distance = np.hypot(xs - center[0], ys - center[1]) / size
        return colour * np.clip(1.12 - 0.35 * distance, 0.85, 1.12)[..., None]

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        height, width = self.spec.image_size
        stripes = rng.normal(0.0, 3.0, (1, width, 1)).astype(np.float32)
        return image + stripes + rng.normal(0.0, 2.5, image.shape).astype(np.float32)


class _ComicDomain(_ShapeDomain):
    """Comic panels: flat saturated fills, every part outlined in thick ink, on flat
    backgrounds with halftone dots."""

    _PALETTE = np.array([[228, 38, 44], [250, 204, 28], [36, 92, 222], [38, 170, 72],
                         [246, 122, 24], [198, 52, 160], [56, 190, 222]], np.float32)
    _SKIN = np.array([255, 208, 156], np.float32)
    _WHITE = np.array([250, 250, 244], np.float32)
    ink_width = 2  # pixels of ink outside every part

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        sky_colour, ground_colour = self._PALETTE[rng.choice(len(self._PALETTE), 2,
                                                             replace=False)]
        sky = 0.35 * sky_colour + 0.65 * self._WHITE
        ground = 0.6 * ground_colour + 0.4 * self._WHITE
        horizon = int(rng.uniform(0.6, 0.85) * height)
        image = np.empty((height, width, 3), np.float32)
        image[:horizon], image[horizon:] = sky, ground
        # Ben-Day dots: a darker tint of the sky on a regular grid.
        period = int(rng.integers(5, 8))
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        offset_x = (xs + (ys // period % 2) * period / 2) % period - period / 2
        offset_y = ys % period - period / 2
        dots = np.clip(rng.uniform(1.0, 1.6) - np.hypot(offset_x, offset_y) + 0.5, 0.0, 1.0)
        dots[horizon:] = 0.0
        image *= 1.0 - 0.25 * dots[..., None]
        ink = np.zeros((height, width), np.uint8)
        cv2.line(ink, (0, horizon), (width - 1, horizon), 255, 2, cv2.LINE_AA)
        coverage = ink[..., None].astype(np.float32) / 255.0
        return _Canvas(image * (1.0 - coverage) + 25.0 * coverage, None)

    def part_layers(self, rng: np.random.Generator, part: _Part, points: np.ndarray,
                    size: float, pen_width: Optional[int]) -> List[Tuple[np.ndarray, str]]:
        # Ink under the fill, as wide as the fill plus a border on each side: the fill on
        # top leaves an outline of ink_width pixels around every part.
        fill = super().part_layers(rng, part, points, size, pen_width)
        stroke = 0 if part.closed else max(1, int(round(part.width * size)))
        ink = np.zeros(self.spec.image_size, np.uint8)
        cv2.polylines(ink, [_to_cv_points(points)], part.closed, 255,
                      stroke + 2 * self.ink_width, cv2.LINE_AA, _SUBPIXEL_BITS)
        return [(ink, 'ink'), *fill]

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        body, dark = self._PALETTE[rng.choice(len(self._PALETTE), 2, replace=False)]
        return {
            'body': body,
            'dark': 0.55 * dark,
            'light': self._WHITE,
            'skin': self._SKIN,
            'ink': np.full(3, rng.uniform(10, 35), np.float32),
        }

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        return image + rng.normal(0.0, 1.5, image.shape).astype(np.float32)


class _MicroscopyDomain(_ShapeDomain):
    """Fluorescence-like dark field: cells, rods and budding yeast glow with bright
    membranes on a near-black slide with out-of-focus haze and debris; shot noise."""

    rotate = True
    _STAINS = np.array([[110, 255, 120], [255, 120, 96], [240, 230, 110]], np.float32)
    _NUCLEUS = np.array([70, 120, 255], np.float32)

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        haze = np.clip(_smooth_noise(rng, height, width, 4), 0.0, None) * rng.uniform(6, 14)
        image = np.array([4, 6, 8], np.float32) + haze * np.array([0.5, 1.0, 0.7], np.float32)
        for _ in range(int(rng.integers(10, 30))):  # debris: specks, not objects
            brightness = float(rng.uniform(25, 70))
            cv2.circle(image, (int(rng.integers(width)), int(rng.integers(height))),
                       int(rng.integers(0, 2)), (brightness, ) * 3, -1, cv2.LINE_AA)
        return _Canvas(image, None)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        stain = self._STAINS[rng.integers(len(self._STAINS))] * rng.uniform(0.8, 1.0)
        return {
            'body': stain * rng.uniform(0.2, 0.35),  # dim cytoplasm
            'dark': self._NUCLEUS * rng.uniform(0.6, 0.9),  # counter-stained nucleus
            'light': stain,  # the membrane
            'skin': stain,
        }

    def shade(self, rng: np.random.Generator, colour: np.ndarray, center: np.ndarray,
              size: float) -> np.ndarray:
        return colour * (1.0 + 0.12 * rng.standard_normal(colour.shape[:2] + (1, ))).astype(
            np.float32)

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        # Shot noise grows with the square root of the light.
        spread = np.sqrt(np.clip(image, 0.0, None) + 4.0)
        return image + 0.8 * spread * rng.standard_normal(image.shape).astype(np.float32)


class _UnderwaterDomain(_ShapeDomain):
    """Open water: a teal-to-deep-blue depth gradient with light shafts from the surface,
    drifting particles and sometimes a sand bottom; objects lose red with distance and
    the lens vignettes."""

    def background(self, rng: np.random.Generator) -> _Canvas:
        height, width = self.spec.image_size
        top = np.array([rng.uniform(40, 80), rng.uniform(150, 190), rng.uniform(170, 210)],
                       np.float32)
        bottom = np.array([rng.uniform(5, 20), rng.uniform(40, 80), rng.uniform(90, 130)],
                          np.float32)
        depth = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        image = top * (1 - depth) + bottom * depth + np.zeros((1, width, 1), np.float32)
        shafts = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(1, 4))):  # light shafts fading with depth
            x = float(rng.uniform(0, width))
            slant = float(rng.uniform(-0.5, 0.5)) * height
            cv2.line(shafts, (int(x), 0), (int(x + slant), height - 1), 1.0,
                     int(rng.integers(5, 14)))
        shafts = cv2.GaussianBlur(shafts, (0, 0), 4.0) * (1.0 - depth[..., 0])
        image += rng.uniform(25, 45) * shafts[..., None]
        if rng.uniform() < 0.5:  # the sand bottom, with a wavy edge
            edge = rng.uniform(0.78, 0.92) * height + 3.0 * _smooth_noise(
                rng, 1, width, 6)[0, :, 0]
            sand = (np.arange(height, dtype=np.float32)[:, None] >= edge)[..., None]
            sand_colour = np.array([120, 130, 100], np.float32) * rng.uniform(0.7, 1.0)
            image = np.where(sand, sand_colour + 6.0 * _smooth_noise(rng, height, width, 16),
                             image)
        for _ in range(int(rng.integers(15, 40))):  # particles drifting in the water
            brightness = float(rng.uniform(150, 220))
            cv2.circle(image, (int(rng.integers(width)), int(rng.integers(height))),
                       int(rng.integers(0, 2)), (brightness, ) * 3, -1, cv2.LINE_AA)
        return _Canvas(image, None)

    def tone_colours(self, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        body = _random_rgb(rng, (0.6, 1.0), (0.6, 1.0))
        return {
            'body': body,
            'dark': 0.55 * body,
            'light': np.full(3, rng.uniform(215, 250), np.float32),
            'skin': np.array([235, 200, 60], np.float32),  # a diver's yellow mask
        }

    def shade(self, rng: np.random.Generator, colour: np.ndarray, center: np.ndarray,
              size: float) -> np.ndarray:
        # Water absorbs red first; caustics ripple over the surface.
        distance = rng.uniform(0.0, 0.6)
        absorption = np.array([1 - 0.8 * distance, 1 - 0.35 * distance, 1 - 0.15 * distance],
                              np.float32)
        height, width = colour.shape[:2]
        ripple = 1.0 + 0.12 * _smooth_noise(rng, height, width, 12)
        return colour * absorption * ripple

    def finish(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        height, width = self.spec.image_size
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        radius2 = ((xs - width / 2) / width)**2 + ((ys - height / 2) / height)**2
        vignette = (1.0 - 0.9 * radius2)[..., None]
        return image * vignette + rng.normal(0.0, 3.0, image.shape).astype(np.float32)


_DOMAINS = {
    'photo': _PhotoDomain,
    'sketch': _SketchDomain,
    'aerial': _AerialDomain,
    'scan': _ScanDomain,
    'thermal': _ThermalDomain,
    'comic': _ComicDomain,
    'microscopy': _MicroscopyDomain,
    'underwater': _UnderwaterDomain,
}

# A proposal that collides is redrawn; after this many tries the image keeps fewer objects.
_MAX_PLACEMENT_ATTEMPTS = 40
# With overlap allowed, an occluded object must keep this share of its own pixels.
_MIN_VISIBLE_FRACTION = 0.7
# Anti-aliased fringes under 1/8 coverage are not painted: invisible, they would loosen boxes.
_MIN_PAINTED_ALPHA = 32

# A pixel-edge box (x0, y0, x1, y1): it spans columns x0 .. x1 - 1 and rows y0 .. y1 - 1.
_Box = Tuple[int, int, int, int]


def _tight_box(mask: np.ndarray) -> Optional[_Box]:
    """Bounds of the true pixels of ``mask``, or None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _box_iou(a: _Box, b: _Box) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _boxes_apart(a: _Box, b: _Box) -> bool:
    """True when at least one background pixel separates the two boxes."""
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def _render_image(rng: np.random.Generator, spec: DemoDatasetSpec,
                  domain: _Domain) -> Tuple[np.ndarray, List[Tuple[int, _Box]]]:
    """Render one image; returns it as uint8 and its ``(label, tight box)`` objects."""
    canvas = domain.background(rng)
    image = canvas.image
    # owner[y, x] is the index of the object visible at the pixel, -1 for background.
    owner = np.full(spec.image_size, -1, np.int32)
    labels: List[int] = []
    num_objects = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    for _ in range(num_objects):
        for _attempt in range(_MAX_PLACEMENT_ATTEMPTS):
            proposal = domain.propose(rng, canvas)
            alpha = np.where(proposal.alpha >= _MIN_PAINTED_ALPHA, proposal.alpha, 0)
            covered = alpha > 0
            box = _tight_box(covered)
            if box is None or (canvas.allowed is not None
                               and not canvas.allowed[covered].all()):
                continue
            if _collides(spec, box, covered, owner, len(labels)):
                continue
            coverage = alpha[..., None].astype(np.float32) / 255.0
            image = image * (1.0 - coverage) + proposal.paint(rng) * coverage
            owner[covered] = len(labels)
            labels.append(proposal.label)
            break
    image = np.clip(np.round(domain.finish(rng, image)), 0, 255).astype(np.uint8)
    return image, [(label, _tight_box(owner == index)) for index, label in enumerate(labels)]


def _collides(spec: DemoDatasetSpec, box: _Box, covered: np.ndarray,
              owner: np.ndarray, num_placed: int) -> bool:
    """Whether a new object on top breaks the overlap rules with the ones placed so far."""
    for index in range(num_placed):
        visible = owner == index
        placed_box = _tight_box(visible)
        if spec.max_iou == 0.0:
            if not _boxes_apart(box, placed_box):
                return True
            continue
        if _box_iou(box, placed_box) > spec.max_iou:
            return True
        remaining = np.count_nonzero(visible & ~covered)
        if remaining < _MIN_VISIBLE_FRACTION * np.count_nonzero(visible):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Files: images, COCO annotations, manifest.
# --------------------------------------------------------------------------------------------

CountOverride = Union[None, int, Mapping[str, int]]


def _split_rng(seed: int, name: str, split: str) -> np.random.Generator:
    """An independent generator per (dataset, split), stable across Python runs."""
    key = (zlib.crc32(name.encode()), zlib.crc32(split.encode()))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


_SPECS_BY_NAME = {spec.name: spec for spec in DEMO_DATASETS + EXTRA_DEMO_DATASETS}


def _chosen_specs(datasets: Optional[Sequence[str]]) -> Tuple[DemoDatasetSpec, ...]:
    """The specs of the dataset names ``datasets`` in their order; None means the default four."""
    if datasets is None:
        return DEMO_DATASETS
    known = list(_SPECS_BY_NAME)
    if isinstance(datasets, str) or not isinstance(datasets, Sequence) or not datasets \
            or not all(isinstance(name, str) for name in datasets):
        raise ValueError(f'datasets must be a non-empty list of demo dataset names (known: '
                         f'{known}), got {datasets!r}')
    unknown = [name for name in datasets if name not in _SPECS_BY_NAME]
    if unknown:
        raise ValueError(f'Unknown demo datasets {unknown}; known: {known}')
    repeated = sorted({name for name in datasets if datasets.count(name) > 1})
    if repeated:
        raise ValueError(f'datasets names {repeated} more than once; name each dataset once')
    return tuple(_SPECS_BY_NAME[name] for name in datasets)


def _resolve_counts(specs: Sequence[DemoDatasetSpec],
                    overrides: Mapping[str, CountOverride]) -> Dict[str, Dict[str, int]]:
    """``{name: {split: n}}`` for ``specs``: their sizes with ``{split: override}`` applied."""
    chosen = [spec.name for spec in specs]
    counts = {spec.name: {split: getattr(spec, f'num_{split}') for split in SPLITS}
              for spec in specs}
    for split, override in overrides.items():
        if override is None:
            continue
        per_dataset = override if isinstance(override, Mapping) else dict.fromkeys(chosen,
                                                                                  override)
        unknown = sorted(set(per_dataset) - set(_SPECS_BY_NAME))
        if unknown:
            raise ValueError(f'Unknown demo datasets {unknown} in num_{split}; known: '
                             f'{list(_SPECS_BY_NAME)}')
        not_chosen = sorted(set(per_dataset) - set(chosen))
        if not_chosen:
            raise ValueError(f'num_{split} gives counts for {not_chosen}, which are not among '
                             f'the datasets generated ({chosen}); add them to datasets or drop '
                             'their counts')
        for name, count in per_dataset.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f'{split} count of {name!r} must be a positive int, '
                                 f'got {count!r}')
            counts[name][split] = count
    return counts


def _image_name(name: str, split: str, index: int) -> str:
    return f'{name}_{split}_{index:04d}.png'


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, sort_keys=True, separators=(',', ':')) + '\n')


def _generate_split(spec: DemoDatasetSpec, split: str, count: int, seed: int, root: Path,
                    progress_bar: tqdm) -> int:
    """Render and write one split; returns the number of objects."""
    rng = _split_rng(seed, spec.name, split)
    domain = _DOMAINS[spec.name](spec)
    image_dir = root / 'images' / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob(f'{spec.name}_{split}_*.png'):
        stale.unlink()
    height, width = spec.image_size
    images, annotations = [], []
    for index in range(count):
        image, objects = _render_image(rng, spec, domain)
        file_name = _image_name(spec.name, split, index)
        if image.shape[-1] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(image_dir / file_name), image, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        image_id = index + 1
        images.append({'id': image_id, 'file_name': file_name, 'width': width,
                       'height': height})
        for label, (x0, y0, x1, y1) in objects:
            annotations.append({
                'id': len(annotations) + 1,
                'image_id': image_id,
                'category_id': label + 1,
                'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                'area': float((x1 - x0) * (y1 - y0)),
                'iscrowd': 0,
            })
        progress_bar.update(1)
    categories = [{'id': i + 1, 'name': name, 'supercategory': spec.name}
                  for i, name in enumerate(spec.classes)]
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    _write_json(root / 'annotations' / f'{split}.json',
                {'images': images, 'annotations': annotations, 'categories': categories})
    return len(annotations)


def _describe(out_dir: Path, manifest: dict,
              specs: Sequence[DemoDatasetSpec]) -> Dict[str, dict]:
    """What `generate_demo_mixture` returns, rebuilt from a manifest and its location."""
    description = {}
    for spec in specs:
        entry = manifest['datasets'][spec.name]
        root = out_dir / spec.name
        description[spec.name] = {
            'classes': spec.classes,
            'image_size': spec.image_size,
            'data_root': str(root),
        }
        for split in SPLITS:
            description[spec.name][split] = {
                'ann_file': str(root / 'annotations' / f'{split}.json'),
                'img_prefix': str(root / 'images' / split) + '/',
                **entry[split],
            }
    return description


def _is_complete(out_dir: Path, manifest: dict, specs: Sequence[DemoDatasetSpec]) -> bool:
    """Whether every file the manifest promises for ``specs`` is on disk."""
    for spec in specs:
        root = out_dir / spec.name
        for split in SPLITS:
            if not (root / 'annotations' / f'{split}.json').is_file():
                return False
            count = manifest['datasets'][spec.name][split]['num_images']
            if not all((root / 'images' / split / _image_name(spec.name, split, i)).is_file()
                       for i in range(count)):
                return False
    return True


def _read_manifest(path: Path) -> Optional[dict]:
    """The manifest of a previous run, or None when missing or unreadable."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def generate_demo_mixture(out_dir: Union[str, Path], seed: int = 0,
                          num_train: CountOverride = None, num_val: CountOverride = None,
                          num_test: CountOverride = None, progress: bool = True,
                          datasets: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Write the demo mixture under ``out_dir``, or reuse it if it is already there.

    Args:
        out_dir: Root directory of the mixture (created if missing).
        seed: Non-negative seed; the same seed always gives byte-identical files.
        num_train: Training images per dataset: an int for all datasets, a dict
            ``{name: count}`` for some, or None for the specs' defaults.
        num_val: Validation images per dataset, like ``num_train``.
        num_test: Test images per dataset, like ``num_train``.
        progress: Show one progress bar per dataset.
        datasets: Names of the datasets to write, from :data:`DEMO_DATASETS` and
            :data:`EXTRA_DEMO_DATASETS`, in the order wanted; None means the four of
            :data:`DEMO_DATASETS`. A dataset's files do not depend on which others are
            chosen.

    Returns:
        ``{name: {'classes', 'image_size', 'data_root', 'train': split, 'val': split,
        'test': split}}`` in ``datasets`` order, where each split is ``{'ann_file',
        'img_prefix', 'num_images', 'num_objects'}`` with paths under ``out_dir``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    seed = int(seed)
    out_dir = Path(out_dir)
    specs = _chosen_specs(datasets)
    counts = _resolve_counts(specs, dict(train=num_train, val=num_val, test=num_test))
    manifest_path = out_dir / MANIFEST_NAME

    cached = _read_manifest(manifest_path)
    requested = {'generator_version': DEMO_MIXTURE_VERSION, 'seed': seed,
                 'names': [spec.name for spec in specs], 'counts': counts}
    if cached is not None and {key: cached.get(key) for key in requested} == requested \
            and _is_complete(out_dir, cached, specs):
        return _describe(out_dir, cached, specs)

    # Drop the manifest first: an interrupted run must not look complete next time.
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    written = {}
    for spec in specs:
        split_counts = counts[spec.name]
        with tqdm(total=sum(split_counts.values()), desc=f'demo {spec.name}',
                  disable=not progress, leave=True) as progress_bar:
            written[spec.name] = {
                split: {
                    'num_images': split_counts[split],
                    'num_objects': _generate_split(spec, split, split_counts[split], seed,
                                                   out_dir / spec.name, progress_bar),
                }
                for split in SPLITS
            }
    manifest = dict(requested, datasets=written)
    _write_json(manifest_path, manifest)
    return _describe(out_dir, manifest, specs)

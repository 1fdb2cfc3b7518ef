"""Server-side CT rendering with pillow: window/level, evidence boxes, a per-study cache.

A study's HU volume is loaded once (dicom_io, the series the draft was made from) and each
window is applied to the whole volume in one vectorised pass (uint8), so a slice step only
crops one plane and draws the boxes: no DICOM decoding and no HU arithmetic per step.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from ui.errors import UIError

#: (width, level) in HU
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "bone": (1800.0, 400.0),
}
DISPLAY_SIZE = 256  # the page scales it up; smaller PNGs make steps faster
BOX_COLOURS = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 96, 255))


def check_window(width: float, level: float) -> tuple[float, float]:
    if not (np.isfinite(width) and np.isfinite(level)):
        raise UIError("window width and level must be numbers")
    if not 1.0 <= width <= 10000.0:
        raise UIError(f"window width {width:g} HU is out of range: use 1..10000")
    if not -3000.0 <= level <= 5000.0:
        raise UIError(f"window level {level:g} HU is out of range: use -3000..5000")
    return float(width), float(level)


def window_volume(hu: npt.NDArray[Any], width: float, level: float) -> npt.NDArray[np.uint8]:
    """HU → uint8 grey levels (linear between level ± width/2), the whole volume at once."""
    lo = level - width / 2.0
    scale = 255.0 / width
    out = np.empty(hu.shape, dtype=np.float32)
    np.subtract(hu, lo, out=out, dtype=np.float32)
    out *= scale
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


@dataclass(frozen=True)
class Box:
    """An evidence box in volume indices (k0, i0, j0, k1, i1, j1) with its finding label."""

    label: str
    voxels: tuple[int, int, int, int, int, int]


def render_slice(windowed: npt.NDArray[np.uint8], k: int, boxes: Sequence[Box] = (),
                 overlay: bool = False, min_size: int = DISPLAY_SIZE) -> Image.Image:
    """Plane ``k`` as an image (enlarged by a whole factor, nearest neighbour, to at least
    ``min_size`` pixels); with ``overlay`` the boxes crossing it are drawn."""
    n = windowed.shape[0]
    if not 0 <= k < n:
        raise UIError(f"slice {k} is outside the series (0..{n - 1})")
    plane = windowed[k]
    f = max(1, -(-min_size // max(plane.shape)))
    if f > 1:
        plane = np.repeat(np.repeat(plane, f, axis=0), f, axis=1)
    img = Image.fromarray(np.ascontiguousarray(plane), mode="L")
    hits = [(i, b) for i, b in enumerate(boxes) if b.voxels[0] <= k <= b.voxels[3]]
    if not overlay or not hits:
        return img
    rgb = img.convert("RGB")
    draw = ImageDraw.Draw(rgb)
    for i, b in hits:
        _, i0, j0, _, i1, j1 = b.voxels
        col = BOX_COLOURS[i % len(BOX_COLOURS)]
        draw.rectangle((j0 * f, i0 * f, (j1 + 1) * f - 1, (i1 + 1) * f - 1), outline=col,
                       width=2)
        draw.text((j0 * f, max(0, i0 * f - 12)), b.label, fill=col)
    return rgb


class StudyImages:
    """One study's HU volume and its windowed copies (one per window used)."""

    def __init__(self, hu: npt.NDArray[Any], max_windows: int = 4) -> None:
        if hu.ndim != 3:
            raise UIError("expected a 3-D volume (slices, rows, cols)")
        self.hu = hu
        self.max_windows = max_windows
        self._windows: OrderedDict[tuple[float, float], npt.NDArray[np.uint8]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    def windowed(self, width: float, level: float) -> npt.NDArray[np.uint8]:
        key = check_window(width, level)
        with self._lock:
            if key in self._windows:
                self._windows.move_to_end(key)
                return self._windows[key]
        arr = window_volume(self.hu, *key)
        with self._lock:
            self._windows[key] = arr
            while len(self._windows) > self.max_windows:
                self._windows.popitem(last=False)
        return arr

    def render(self, k: int, width: float, level: float, boxes: Sequence[Box] = (),
               overlay: bool = False) -> Image.Image:
        return render_slice(self.windowed(width, level), k, boxes, overlay)


class ImageCache:
    """Least-recently-used :class:`StudyImages` per key (the report's series), loaded once
    even when several requests ask for the same study at the same time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StudyImages] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str, load: Callable[[], StudyImages]) -> StudyImages:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            klock = self._loading.setdefault(key, threading.Lock())
        with klock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            item = load()
            with self._lock:
                self._items[key] = item
                self._loading.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return item

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

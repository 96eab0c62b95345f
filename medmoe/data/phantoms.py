"""Procedural medical phantoms: the book's default data set, generated on a CPU in seconds.

Explained in the book: *Chapter 0, the MoE primer* (a mixed-modality 2D set for routing by modality),
then used wherever a chapter needs data without a download: the text-guided segmentation chapters read
the 2D phantoms (written in the QaTa-COV19 layout by :mod:`medmoe.papers.mlmoe.data`), the partially labelled
CT chapter (MoME / CLIP-Driven Universal Model) reads the 3D volumes.

Nothing here downloads anything, and every random choice goes through a :class:`numpy.random.Generator`
built from the seed, so the same seed gives the same arrays and the same reports on every machine.

2D phantoms (:func:`make_phantom_2d`, :class:`PhantomDataset2D`)
    Five modalities with clearly different image statistics:

    * ``"cxr"``  chest radiograph: smooth, low noise, dark lungs with ribs, bright heart and spine;
    * ``"ct"``   axial chest CT slice: built in Hounsfield units (air -1000, lung -850, fat -100, soft
      tissue 40, bone 700), white Gaussian noise, then a lung window (level -500, width 1400) to [0, 1];
    * ``"mri"``  axial T1 brain MRI: scalp, skull, CSF, grey and white matter, a smooth multiplicative
      bias field and Rician noise (dark, noisy background);
    * ``"us"``   ultrasound: an organ inside a fan-shaped sector, multiplicative speckle, depth
      attenuation, black outside the sector;
    * ``"derm"`` dermoscopy: RGB skin with pigmented lesions, optional hairs, a dark circular vignette.

    Every image has a multi-class anatomy mask (class names in :data:`ANATOMY_CLASSES`), a binary
    lesion mask with 1-3 irregular lesions, each in a different *named region*
    (:data:`LESION_REGIONS`), and a one-sentence report in the style of the LViT QaTa-COV19 text
    annotations built from the region names of the true lesions only.

    **Distractors.** About half of the images also contain 1-2 lesion-like blobs, painted exactly like the
    real lesions, in *other* named regions. They are not in the lesion mask and not in the report. The
    image alone is therefore ambiguous, and the report carries information the image lacks: this is what
    lets a text-guided segmenter beat an image-only one on these phantoms.

    **Left and right.** For ``cxr``, ``ct`` and ``mri``, "left" and "right" are the *patient's* sides in
    the radiological display convention: the patient's left is on the *image's right* (the heart sits on
    the image's right in ``cxr``). For ``ct`` and ``mri`` (axial slices, anterior at the top) "upper",
    "middle" and "lower" are thirds of the organ along the image's vertical axis (anterior to posterior),
    so the vocabulary is shared with ``cxr``. For ``us`` and ``derm`` there is no patient orientation and
    the quadrant names are in the *image's* sense ("upper left quadrant" = top-left of the image as
    displayed). :func:`region_masks` computes every named region from the anatomy mask.

3D phantoms (:func:`make_phantom_3d`, :class:`PhantomVolumeDataset`)
    Small abdominal CT-like volumes in Hounsfield units with the organs in :data:`CLASSES_3D`, and
    "partially labelled" source data sets (:data:`SOURCE_DATASETS`) that each annotate only some classes,
    as in MoME and the CLIP-Driven Universal Model.

Example:
    >>> ph = make_phantom_2d(modality="cxr", seed=0)
    >>> ph.image.shape, ph.lesion.shape, ph.report.split(",")[0] in ("Unilateral pulmonary infection",
    ...                                                            "Bilateral pulmonary infection")
    ((1, 128, 128), (128, 128), True)
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

try:  # optional (installed with scikit-learn): keeps the small matrix products single-threaded
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = [
    "MODALITIES",
    "ANATOMY_CLASSES",
    "LESION_REGIONS",
    "Phantom2D",
    "make_phantom_2d",
    "region_masks",
    "PhantomDataset2D",
    "PhantomFindingSet",
    "CLASSES_3D",
    "HU_3D",
    "SOURCE_DATASETS",
    "Phantom3D",
    "make_phantom_3d",
    "PhantomVolumeDataset",
    "ct_prompt",
    "rgb_to_grey",
]

# ----------------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------------

MODALITIES: tuple[str, ...] = ("cxr", "ct", "mri", "us", "derm")
"""The 2D modalities, in the order used for the integer ``modality`` label."""

ANATOMY_CLASSES: dict[str, tuple[str, ...]] = {
    "cxr": ("background", "left lung", "right lung", "heart"),
    "ct": ("background", "body", "left lung", "right lung", "heart", "bone"),
    "mri": ("background", "scalp", "skull", "cerebrospinal fluid", "grey matter", "white matter"),
    "us": ("background", "tissue", "organ"),
    "derm": ("background", "skin", "hair"),
}
"""Anatomy class names per modality; the anatomy mask holds indices into these tuples (0 = background).
Class ids are per modality: id 1 is "left lung" in ``cxr`` but "body" in ``ct``."""

_LUNG_ZONES = (
    "upper left lung",
    "middle left lung",
    "lower left lung",
    "upper right lung",
    "middle right lung",
    "lower right lung",
)
_QUADRANTS = (
    "upper left quadrant",
    "upper right quadrant",
    "lower left quadrant",
    "lower right quadrant",
    "centre",
)
LESION_REGIONS: dict[str, tuple[str, ...]] = {
    "cxr": _LUNG_ZONES,
    "ct": _LUNG_ZONES,
    "mri": (
        "left frontal lobe",
        "left parietal lobe",
        "left occipital lobe",
        "right frontal lobe",
        "right parietal lobe",
        "right occipital lobe",
    ),
    "us": _QUADRANTS,
    "derm": _QUADRANTS,
}
"""Named regions where lesions (and distractors) are placed, per modality. The order is the order in
which regions are listed in a report. See :func:`region_masks` for their definition."""

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

# Lesion radius, as a fraction of the smaller half-extent of the region it is drawn in.
_LESION_SIZE = {
    "cxr": (0.45, 0.8),
    "ct": (0.45, 0.8),
    "mri": (0.45, 0.8),
    "us": (0.45, 0.75),
    "derm": (0.3, 0.5),
}

# CT lung window used to bring the 2D CT phantom from HU to [0, 1].
_CT2D_WINDOW = (-1200.0, 200.0)


def _check_modality(modality: object) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    return modality  # type: ignore[return-value]


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_size(size: object, minimum: int = 32) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum:
        raise ValueError(f"size must be an int >= {minimum}, got {size!r}")
    return int(size)


def _item_seed(*parts: int) -> int:
    """One integer seed from several (e.g. ``(dataset seed, item index)``), via NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------------------
# Small numerical helpers (all vectorised; cached matrices make them cheap to call per image)
# ----------------------------------------------------------------------------------------------------------


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while a phantom is generated.

    The phantoms use many small matrix products (blurs, smooth fields). A multi-threaded BLAS gains
    nothing on them and, on a busy 2-core machine, its threads fight for the cores: generation was
    measured 5-7x slower. Uses ``threadpoolctl`` when it is installed; otherwise does nothing.
    """
    if threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@lru_cache(maxsize=32)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates ``(Y, X)``, each ``(size, size)`` in [-1, 1]; Y grows downwards."""
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=32)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(rows, cols)``, each ``(size, size)`` float32."""
    t = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=64)
def _jittered_grid(rng: np.random.Generator, size: int, *, shift: float, cells: int):
    """Image coordinates with a random zoom (0.93-1.05) and shift (+-``shift``), and a smooth field for
    deforming shapes: ``(y, x, f)``, each ``(size, size)``. Draws from ``rng`` in that order."""
    yy, xx = _grid(size)
    scale = rng.uniform(0.93, 1.05)
    oy, ox = rng.uniform(-shift, shift, 2)
    return (yy - oy) / scale, (xx - ox) / scale, _smooth_field(rng, (size, size), cells=cells)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` Gaussian smoothing matrix, rows normalised to 1 (so borders are not darkened)."""
    t = np.arange(n, dtype=np.float64)
    k = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
    k[k < 1e-8] = 0.0  # no float32 denormals: they make matrix products very slow
    k /= k.sum(axis=1, keepdims=True)
    k = k.astype(np.float32)
    k.flags.writeable = False
    return k


def _blur(img: np.ndarray, sigma: float, sigma_x: float | None = None) -> np.ndarray:
    """Separable Gaussian blur of the last two axes of ``img`` (``(..., H, W)``), sigmas in pixels."""
    h, w = img.shape[-2:]
    ky = _blur_matrix(h, float(sigma))
    kx = _blur_matrix(w, float(sigma if sigma_x is None else sigma_x))
    return ky @ img.astype(np.float32, copy=False) @ kx.T


@lru_cache(maxsize=64)
def _upsample_matrix(n: int, cells: int) -> np.ndarray:
    """``(n, cells)`` matrix mapping ``cells`` random control values to a smooth profile of length n."""
    t = np.linspace(0.0, 1.0, n)
    c = np.linspace(0.0, 1.0, cells)
    width = 1.0 / max(cells - 1, 1)
    u = np.exp(-0.5 * ((t[:, None] - c[None, :]) / width) ** 2)
    u[u < 1e-8] = 0.0  # no float32 denormals
    u /= u.sum(axis=1, keepdims=True)
    u = u.astype(np.float32)
    u.flags.writeable = False
    return u


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth random field of the given 2D or 3D ``shape`` with about ``cells`` bumps per axis.

    Gaussian control values on a coarse grid, interpolated with Gaussian kernels, then standardised to
    zero mean and unit standard deviation. float32.
    """
    coarse = rng.standard_normal((cells,) * len(shape)).astype(np.float32)
    field = coarse
    for axis, n in enumerate(shape):
        u = _upsample_matrix(n, cells)
        field = np.moveaxis(np.tensordot(u, field, axes=([1], [axis])), 0, axis)
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def _ellipse_radius(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0
) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse centred at (cy, cx) with semi-axes (ry, rx)."""
    dy, dx = yy - cy, xx - cx
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2)


def rgb_to_grey(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of a ``(3, H, W)`` RGB image in [0, 1]; returns ``(1, H, W)`` float32.

    Example:
        >>> rgb_to_grey(np.ones((3, 4, 4), np.float32)).shape
        (1, 4, 4)
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    w = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return np.tensordot(w, image.astype(np.float32, copy=False), axes=([0], [0]))[None].astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Named regions
# ----------------------------------------------------------------------------------------------------------


def _thirds(mask: np.ndarray) -> list[np.ndarray]:
    """Split ``mask`` into upper / middle / lower thirds of its row extent."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [mask.copy(), mask.copy(), mask.copy()]
    y0, y1 = rows[0], rows[-1] + 1
    r = np.arange(mask.shape[0])[:, None]
    e1 = y0 + (y1 - y0) / 3.0
    e2 = y0 + 2.0 * (y1 - y0) / 3.0
    return [mask & (r < e1), mask & (r >= e1) & (r < e2), mask & (r >= e2)]


def _quadrants_and_centre(fg: np.ndarray) -> dict[str, np.ndarray]:
    """Four image-sense quadrants of ``fg``'s bounding box, minus a central ellipse ("centre")."""
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return {name: fg.copy() for name in _QUADRANTS}
    cy, cx = (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0
    hy, hx = (rows[-1] - rows[0] + 1) / 2.0, (cols[-1] - cols[0] + 1) / 2.0
    py, px = np.indices(fg.shape, dtype=np.float32)
    centre = fg & (((py - cy) / (0.4 * hy)) ** 2 + ((px - cx) / (0.4 * hx)) ** 2 < 1.0)
    rest = fg & ~centre
    upper, left = py < cy, px < cx
    return {
        "upper left quadrant": rest & upper & left,
        "upper right quadrant": rest & upper & ~left,
        "lower left quadrant": rest & ~upper & left,
        "lower right quadrant": rest & ~upper & ~left,
        "centre": centre,
    }


def region_masks(anatomy: np.ndarray, modality: str) -> dict[str, np.ndarray]:
    """The named lesion regions of one 2D phantom, computed from its anatomy mask.

    The regions of a modality are disjoint; their names and order are :data:`LESION_REGIONS`.

    * ``cxr``, ``ct``: each lung (patient's side, radiological convention) split into thirds of its
      vertical extent: "upper/middle/lower left/right lung".
    * ``mri``: grey + white matter, split into the patient's left (image right) and right hemispheres at
      the brain's bounding-box centre, and each into vertical thirds: frontal (top), parietal, occipital.
    * ``us``: the organ; ``derm``: everything inside the dermoscope's field of view. Both split into a
      central ellipse ("centre", 40 % of the half-extents) and the four image-sense quadrants around it.

    Args:
        anatomy: ``(H, W)`` integer anatomy mask of a phantom of that modality.
        modality: one of :data:`MODALITIES`.

    Returns:
        ``{region name: (H, W) bool mask}`` in :data:`LESION_REGIONS` order.

    Example:
        >>> ph = make_phantom_2d(modality="ct", seed=1)
        >>> sorted(region_masks(ph.anatomy, "ct")) == sorted(LESION_REGIONS["ct"])
        True
    """
    modality = _check_modality(modality)
    anatomy = np.asarray(anatomy)
    if anatomy.ndim != 2:
        raise ValueError(f"anatomy must have shape (H, W), got {tuple(anatomy.shape)}")
    names = ANATOMY_CLASSES[modality]
    if modality in ("cxr", "ct"):
        out: dict[str, np.ndarray] = {}
        for side in ("left", "right"):
            lung = anatomy == names.index(f"{side} lung")
            for zone, part in zip(("upper", "middle", "lower"), _thirds(lung)):
                out[f"{zone} {side} lung"] = part
        return {name: out[name] for name in LESION_REGIONS[modality]}
    if modality == "mri":
        brain = (anatomy == names.index("grey matter")) | (anatomy == names.index("white matter"))
        cols = np.flatnonzero(brain.any(axis=0))
        mid = (cols[0] + cols[-1] + 1) / 2.0 if cols.size else anatomy.shape[1] / 2.0
        c = np.arange(anatomy.shape[1])[None, :]
        out = {}
        # Radiological convention: the patient's left hemisphere is on the image's right.
        for side, half in (("left", brain & (c >= mid)), ("right", brain & (c < mid))):
            for lobe, part in zip(("frontal", "parietal", "occipital"), _thirds(half)):
                out[f"{side} {lobe} lobe"] = part
        return {name: out[name] for name in LESION_REGIONS[modality]}
    if modality == "us":
        return _quadrants_and_centre(anatomy == names.index("organ"))
    return _quadrants_and_centre(anatomy != 0)  # derm


def _draw_blob(
    rng: np.random.Generator, region: np.ndarray, size_range: tuple[float, float]
) -> np.ndarray:
    """An irregular blob inside ``region`` (bool ``(H, W)``): a rotated ellipse whose boundary radius is
    perturbed by a few random harmonics, clipped to the region. Always at least one pixel."""
    size = region.shape[0]
    ys, xs = np.nonzero(region)
    cy0, cx0 = ys.mean(), xs.mean()
    hy = (ys.max() - ys.min() + 1) / 2.0
    hx = (xs.max() - xs.min() + 1) / 2.0
    near = np.flatnonzero((np.abs(ys - cy0) <= 0.4 * hy) & (np.abs(xs - cx0) <= 0.4 * hx))
    if near.size == 0:
        near = np.arange(ys.size)
    k = near[rng.integers(near.size)]
    cy, cx = float(ys[k]), float(xs[k])
    r = max(rng.uniform(*size_range) * min(hy, hx), 1.5)
    aspect = rng.uniform(0.75, 1.33)
    a, b = r * math.sqrt(aspect), r / math.sqrt(aspect)
    angle = rng.uniform(0.0, math.pi)
    amps = rng.uniform(0.0, 0.15, 3)
    phases = rng.uniform(0.0, 2.0 * math.pi, 3)

    # Work in the blob's bounding window only (the boundary never exceeds 1.45 * max(a, b)).
    reach = int(math.ceil(1.5 * max(a, b))) + 1
    y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, size)
    x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, size)
    py, px = _pixel_grid(size)
    dy, dx = py[y0:y1, x0:x1] - cy, px[y0:y1, x0:x1] - cx
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / a
    v = (-s * dx + c * dy) / b
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    boundary = 1.0 + sum(amps[i] * np.cos((i + 2) * phi + phases[i]) for i in range(3))
    blob = np.zeros_like(region)
    blob[y0:y1, x0:x1] = (rho < boundary) & region[y0:y1, x0:x1]
    blob[int(cy), int(cx)] = True
    return blob


def _place_lesions(
    rng: np.random.Generator, modality: str, regions: dict[str, np.ndarray],
    lesion_regions: Sequence[str] | None = None, distractors: bool = True,
) -> tuple[tuple[str, ...], tuple[str, ...], list[np.ndarray], list[np.ndarray]]:
    """Choose lesion and distractor regions (all different) and draw one blob in each.

    1-3 lesions (probabilities 0.4 / 0.35 / 0.25); 0-2 distractors (0.5 / 0.3 / 0.2), so about half of the
    images have at least one distractor. Returns region names in :data:`LESION_REGIONS` order and blobs.
    ``lesion_regions`` fixes the lesion regions and ``distractors=False`` draws none (the random draws are
    made all the same, so the default path is unchanged).
    """
    available = [name for name in LESION_REGIONS[modality] if regions[name].any()]
    n_lesions = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    n_distractors = int(rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2]))
    order = rng.permutation(len(available))
    if not distractors:
        n_distractors = 0
    if lesion_regions is not None:
        fixed = [available.index(r) for r in lesion_regions]
        order = np.array(fixed + [i for i in order if i not in fixed])
        n_lesions = len(fixed)
    n_lesions = min(n_lesions, len(available))
    lesion_idx = sorted(order[:n_lesions])
    distractor_idx = sorted(order[n_lesions : n_lesions + n_distractors])
    lesion_names = tuple(available[i] for i in lesion_idx)
    distractor_names = tuple(available[i] for i in distractor_idx)
    size_range = _LESION_SIZE[modality]
    lesion_blobs = [_draw_blob(rng, regions[name], size_range) for name in lesion_names]
    distractor_blobs = [_draw_blob(rng, regions[name], size_range) for name in distractor_names]
    return lesion_names, distractor_names, lesion_blobs, distractor_blobs


def _join(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _report(modality: str, lesion_regions: Sequence[str]) -> str:
    """A QaTa-COV19-style sentence built only from the names of the true lesion regions."""
    n = len(lesion_regions)
    num = _NUMBER_WORDS[n]
    plural = "s" if n > 1 else ""
    where = _join(lesion_regions)
    sides = {side for side in ("left", "right") for r in lesion_regions if f" {side} " in f" {r} "}
    laterality = "Bilateral" if len(sides) == 2 else "Unilateral"
    if modality == "cxr":
        return f"{laterality} pulmonary infection, {num} infected area{plural}, {where}."
    if modality == "ct":
        opacity = "ground-glass opacities" if n > 1 else "ground-glass opacity"
        return f"{laterality} {opacity}, {num} lesion{plural}, {where}."
    if modality == "mri":
        return f"{laterality} enhancing brain lesion{plural}, {num} lesion{plural}, {where}."
    if modality == "us":
        return f"Hypoechoic lesion{plural}, {num} lesion{plural}, {where}."
    return f"Pigmented lesion{plural}, {num} area{plural}, {where}."


# ----------------------------------------------------------------------------------------------------------
# 2D phantoms
# ----------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Phantom2D:
    """One 2D phantom.

    Attributes:
        image: ``(C, H, W)`` float32 in [0, 1]; C = 1, or 3 (RGB) for ``derm``.
        lesion: ``(H, W)`` uint8 in {0, 1}, the true lesions only (no distractors).
        anatomy: ``(H, W)`` uint8 class ids into ``ANATOMY_CLASSES[modality]``.
        distractor: ``(H, W)`` uint8 in {0, 1}, the distractor blobs (for analysis; never a target).
        report: the one-sentence report; names exactly ``lesion_regions``.
        modality: one of :data:`MODALITIES`.
        lesion_regions: names of the regions holding a true lesion, in :data:`LESION_REGIONS` order.
        distractor_regions: names of the regions holding a distractor (disjoint from ``lesion_regions``).
        seed: the seed it was generated from.
    """

    image: np.ndarray
    lesion: np.ndarray
    anatomy: np.ndarray
    distractor: np.ndarray
    report: str
    modality: str
    lesion_regions: tuple[str, ...]
    distractor_regions: tuple[str, ...]
    seed: int

    @property
    def anatomy_classes(self) -> tuple[str, ...]:
        """Class names for :attr:`anatomy`."""
        return ANATOMY_CLASSES[self.modality]


def _paint_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth texture in [0, 1], shared by all lesions and distractors of one image (same appearance)."""
    return 0.5 + 0.5 * np.tanh(_smooth_field(rng, (size, size), cells=max(size // 8, 4)))


def _soft(blob: np.ndarray) -> np.ndarray:
    """Slightly blurred blob, so painted lesions have soft edges."""
    return np.clip(_blur(blob.astype(np.float32), 0.8), 0.0, 1.0)


def _build_cxr(rng: np.random.Generator, size: int):
    y, x, f = _jittered_grid(rng, size, shift=0.04, cells=6)
    tilt = rng.uniform(-0.08, 0.08)

    body = _ellipse_radius(y, x, 0.15, 0.0, 1.05, 0.92) < 1.0 + 0.03 * f
    # Patient's right lung is on the image's left (radiological convention).
    right_lung = _ellipse_radius(y, x, -0.05, -0.43, 0.62, 0.29, tilt) < 1.0 + 0.05 * f
    left_lung = _ellipse_radius(y, x, -0.02, 0.43, 0.60, 0.28, -tilt) < 1.0 + 0.05 * f
    heart = _ellipse_radius(y, x, 0.33 + rng.uniform(-0.04, 0.04), 0.12, 0.30, 0.33) < 1.0
    names = ANATOMY_CLASSES["cxr"]
    anatomy = np.zeros((size, size), np.uint8)
    anatomy[right_lung & body] = names.index("right lung")
    anatomy[left_lung & body] = names.index("left lung")
    anatomy[heart] = names.index("heart")

    img = 0.04 + 0.50 * body
    img = img + 0.15 * body * np.exp(-((x / 0.1) ** 2))  # spine / mediastinum
    lungs = (anatomy == names.index("left lung")) | (anatomy == names.index("right lung"))
    img = np.where(lungs, 0.20 + 0.03 * _smooth_field(rng, (size, size), cells=10), img)
    ribs = 0.5 + 0.5 * np.cos(2.0 * math.pi * (y - 0.3 * x**2) / 0.2 + rng.uniform(0, 2 * math.pi))
    img = img + 0.12 * body * np.clip((ribs - 0.6) / 0.4, 0.0, 1.0)
    img = np.where(heart, 0.68, img)
    img = _blur(img.astype(np.float32), 1.2 * size / 128)

    def paint(image: np.ndarray, soft: np.ndarray, tex: np.ndarray) -> np.ndarray:
        return image + rng.uniform(0.2, 0.3) * soft * (0.7 + 0.3 * tex)

    def finish(image: np.ndarray) -> np.ndarray:
        image = image + rng.normal(0.0, 0.012, image.shape)
        image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
        return image[None]

    return anatomy, img, paint, finish


def _build_ct(rng: np.random.Generator, size: int):
    y, x, f = _jittered_grid(rng, size, shift=0.04, cells=6)

    rho_body = _ellipse_radius(y, x, 0.05, 0.0, 0.72, 0.93) * (1.0 - 0.02 * f)
    body = rho_body < 1.0
    inner = rho_body < 0.9
    right_lung = _ellipse_radius(y, x, -0.02, -0.42, 0.50, 0.30) < 1.0 + 0.05 * f
    left_lung = _ellipse_radius(y, x, -0.02, 0.42, 0.50, 0.30) < 1.0 - 0.05 * f
    heart = _ellipse_radius(y, x, -0.12 + rng.uniform(-0.04, 0.04), 0.08, 0.30, 0.26) < 1.0
    vertebra_r = _ellipse_radius(y, x, 0.52, 0.0, 0.13, 0.13)
    bone = (vertebra_r < 1.0) | (_ellipse_radius(y, x, 0.68, 0.0, 0.06, 0.04) < 1.0)
    for t in (0.3, 0.75, 1.2, -0.45):  # rib cross-sections, mirrored left/right
        for sx in (1.0, -1.0):
            ry_, rx_ = 0.05 + 0.86 * 0.72 * math.sin(t), sx * 0.86 * 0.93 * math.cos(t)
            bone |= _ellipse_radius(y, x, ry_, rx_, 0.04, 0.04) < 1.0
    bone &= body
    names = ANATOMY_CLASSES["ct"]
    anatomy = np.zeros((size, size), np.uint8)
    anatomy[body] = names.index("body")
    anatomy[right_lung & inner & ~heart] = names.index("right lung")
    anatomy[left_lung & inner & ~heart] = names.index("left lung")
    anatomy[heart] = names.index("heart")
    anatomy[bone] = names.index("bone")

    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[inner] = 40.0  # muscle / soft tissue
    lungs = (anatomy == names.index("left lung")) | (anatomy == names.index("right lung"))
    vessels = _smooth_field(rng, (size, size), cells=max(size // 5, 8)) > 1.6
    hu[lungs] = -850.0
    hu[lungs & vessels] = -600.0
    hu[heart] = 45.0
    hu[bone] = 700.0
    hu[vertebra_r < 0.7] = 250.0  # cancellous bone inside the vertebral body
    hu = _blur(hu, 0.6 * size / 128)

    def paint(image: np.ndarray, soft: np.ndarray, tex: np.ndarray) -> np.ndarray:
        target = rng.uniform(-350.0, -200.0) + 60.0 * tex
        return image * (1.0 - soft) + soft * target

    def finish(image: np.ndarray) -> np.ndarray:
        image = image + rng.normal(0.0, 25.0, image.shape)
        lo, hi = _CT2D_WINDOW
        return np.clip((image - lo) / (hi - lo), 0.0, 1.0)[None]

    return anatomy, hu, paint, finish


def _build_mri(rng: np.random.Generator, size: int):
    y, x, f = _jittered_grid(rng, size, shift=0.03, cells=5)

    rho = _ellipse_radius(y, x, 0.0, 0.0, 0.90, 0.74) / (1.0 + 0.03 * f)
    phi = np.arctan2(y, x)
    gyri = 0.05 * np.cos(12.0 * phi + rng.uniform(0, 2 * math.pi))
    gyri = gyri + 0.04 * _smooth_field(rng, (size, size), cells=8)
    wm = rho < 0.64 + gyri
    ventricles = np.zeros((size, size), bool)
    for sx in (1.0, -1.0):
        ventricles |= _ellipse_radius(y, x, -0.05, sx * 0.11, 0.22, 0.065, sx * 0.25) < 1.0
    fissure = (np.abs(x) < 0.02) & (y < -0.35)
    names = ANATOMY_CLASSES["mri"]
    anatomy = np.zeros((size, size), np.uint8)
    anatomy[rho < 1.0] = names.index("scalp")
    anatomy[rho < 0.93] = names.index("skull")
    anatomy[rho < 0.86] = names.index("cerebrospinal fluid")
    anatomy[rho < 0.82] = names.index("grey matter")
    anatomy[(rho < 0.82) & wm] = names.index("white matter")
    anatomy[(rho < 0.82) & (ventricles | fissure)] = names.index("cerebrospinal fluid")

    tissue_value = np.asarray([0.0, 0.62, 0.07, 0.12, 0.38, 0.58], np.float32)
    img = _blur(tissue_value[anatomy], 0.7 * size / 128)

    def paint(image: np.ndarray, soft: np.ndarray, tex: np.ndarray) -> np.ndarray:
        target = rng.uniform(0.78, 0.88) + 0.05 * tex
        return image * (1.0 - soft) + soft * target

    def finish(image: np.ndarray) -> np.ndarray:
        bias = np.exp(0.15 * np.clip(_smooth_field(rng, (size, size), cells=3), -2.0, 2.0))
        image = image * bias
        sigma = 0.025
        real = image + rng.normal(0.0, sigma, image.shape)
        imag = rng.normal(0.0, sigma, image.shape)
        return np.clip(np.sqrt(real * real + imag * imag), 0.0, 1.0)[None]

    return anatomy, img, paint, finish


def _build_us(rng: np.random.Generator, size: int):
    yy, xx = _grid(size)
    apex = -1.25
    radius = np.sqrt(xx**2 + (yy - apex) ** 2)
    theta = np.arctan2(xx, yy - apex)
    half_angle = rng.uniform(0.55, 0.65)
    fan = (np.abs(theta) < half_angle) & (radius > 0.35) & (radius < 2.2)
    f = _smooth_field(rng, (size, size), cells=6)

    rho_organ = _ellipse_radius(
        yy, xx, 0.3 + rng.uniform(-0.08, 0.08), rng.uniform(-0.1, 0.1), 0.42, 0.5, rng.uniform(-0.4, 0.4)
    ) * (1.0 - 0.04 * f)
    organ = (rho_organ < 1.0) & fan
    names = ANATOMY_CLASSES["us"]
    anatomy = np.zeros((size, size), np.uint8)
    anatomy[fan] = names.index("tissue")
    anatomy[organ] = names.index("organ")

    echo = 0.40 * (1.0 + 0.15 * _smooth_field(rng, (size, size), cells=8))
    echo = np.where(np.abs(radius - 0.38) < 0.03, 0.8, echo)  # skin line
    echo = np.where(np.abs(radius - 0.6) < 0.015, 0.7, echo)  # fascia
    echo = np.where(organ, 0.55, echo)
    echo = np.where(np.abs(rho_organ - 1.0) < 0.04, 0.9, echo)  # bright capsule
    echo = echo.astype(np.float32)

    def paint(image: np.ndarray, soft: np.ndarray, tex: np.ndarray) -> np.ndarray:
        target = rng.uniform(0.08, 0.15) + 0.05 * tex
        return image * (1.0 - soft) + soft * target

    def finish(image: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((2, size, size)).astype(np.float32)
        noise = _blur(noise, 0.7 * size / 128, 1.3 * size / 128)  # coarser grain laterally
        envelope = np.sqrt(noise[0] ** 2 + noise[1] ** 2)
        envelope /= envelope.mean()
        attenuation = np.exp(-0.3 * (radius - 0.35))
        image = np.clip(0.85 * image * attenuation * envelope, 0.0, 1.0)
        return np.where(fan, image, 0.0)[None]

    return anatomy, echo, paint, finish


def _build_derm(rng: np.random.Generator, size: int):
    yy, xx = _grid(size)
    rho = np.sqrt(xx**2 + yy**2) / rng.uniform(1.25, 1.4)
    fov = rho < 1.0
    tones = np.asarray([[0.94, 0.78, 0.70], [0.86, 0.66, 0.55], [0.76, 0.56, 0.44]], np.float32)
    tone = tones[rng.integers(len(tones))] + rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    f = _smooth_field(rng, (size, size), cells=6)
    redness = np.clip(_smooth_field(rng, (size, size), cells=4), 0.0, None)
    rgb = tone[:, None, None] * (1.0 + 0.05 * f)[None]
    rgb = rgb - 0.04 * redness[None] * np.asarray([0.0, 1.0, 1.0], np.float32)[:, None, None]
    pigment = np.asarray([0.45, 0.28, 0.18], np.float32) * rng.uniform(0.75, 1.1)

    names = ANATOMY_CLASSES["derm"]
    anatomy = np.zeros((size, size), np.uint8)
    anatomy[fov] = names.index("skin")

    def paint(image: np.ndarray, soft: np.ndarray, tex: np.ndarray) -> np.ndarray:
        core = _blur(soft, 2.5 * size / 128)
        core = core / (core.max() + 1e-6)
        colour = pigment[:, None, None] * (1.0 - 0.45 * core * (0.5 + 0.5 * tex))[None]
        return image * (1.0 - soft[None]) + soft[None] * colour

    def finish(image: np.ndarray) -> np.ndarray:
        # Hairs: 0-4 quadratic Bezier curves, drawn over everything (lesions included).
        hair = np.zeros((size, size), bool)
        n_hairs = int(rng.choice([0, 1, 2, 3, 4], p=[0.4, 0.2, 0.2, 0.1, 0.1]))
        t = np.linspace(0.0, 1.0, 3 * size)[:, None]
        for _ in range(n_hairs):
            p = rng.uniform(-1.2, 1.2, (3, 2))
            pts = (1 - t) ** 2 * p[0] + 2 * t * (1 - t) * p[1] + t**2 * p[2]
            idx = np.round((pts + 1.0) * 0.5 * (size - 1)).astype(int)
            keep = (idx >= 0).all(axis=1) & (idx < size - 1).all(axis=1)
            iy, ix = idx[keep, 0], idx[keep, 1]
            hair[iy, ix] = True
            hair[iy, ix + 1] = True
        hair &= fov
        anatomy[hair] = names.index("hair")
        image = np.where(hair[None], np.asarray([0.12, 0.08, 0.06], np.float32)[:, None, None], image)
        image = _blur(image, 0.5 * size / 128)
        vignette = np.clip(_blur(fov.astype(np.float32), 1.5 * size / 128), 0.0, 1.0)
        image = image * vignette[None] + 0.02 * (1.0 - vignette[None])
        image = image + rng.normal(0.0, 0.012, image.shape)
        return np.clip(image, 0.0, 1.0)

    return anatomy, rgb, paint, finish


_BUILDERS = {"cxr": _build_cxr, "ct": _build_ct, "mri": _build_mri, "us": _build_us, "derm": _build_derm}


def make_phantom_2d(*, modality: str, seed: int, size: int = 128, lesion_regions: Sequence[str] | None = None,
                    distractors: bool = True) -> Phantom2D:
    """Generate one 2D phantom: image, anatomy mask, lesion mask (with distractors) and report.

    Steps: draw the anatomy, compute the named regions (:func:`region_masks`), pick 1-3 lesion regions
    and 0-2 other distractor regions, draw an irregular blob in each, paint lesions *and* distractors the
    same way, add the modality's noise, and write the report from the lesion regions only.

    Args:
        modality: one of :data:`MODALITIES`.
        seed: non-negative int; the output is a deterministic function of ``(modality, seed, size)``.
        size: height = width in pixels, >= 32.
        lesion_regions: put the lesions in exactly these named regions (1-3 of ``LESION_REGIONS[modality]``)
            instead of drawing them; for labelled evaluation sets (:func:`finding_benchmark`).
        distractors: ``False`` draws no distractor blobs.

    Returns:
        :class:`Phantom2D` with ``image`` ``(C, size, size)`` float32 in [0, 1] (C = 3 for ``derm``, else
        1), ``lesion``/``distractor``/``anatomy`` ``(size, size)`` uint8.

    Example:
        >>> ph = make_phantom_2d(modality="derm", seed=3, size=64)
        >>> ph.image.shape, ph.image.dtype, set(np.unique(ph.lesion)) <= {0, 1}
        ((3, 64, 64), dtype('float32'), True)
    """
    modality = _check_modality(modality)
    seed = _check_seed(seed)
    size = _check_size(size)
    if lesion_regions is not None:
        if isinstance(lesion_regions, str):
            lesion_regions = (lesion_regions,)
        lesion_regions = tuple(lesion_regions)
        unknown = [r for r in lesion_regions if r not in LESION_REGIONS[modality]]
        if unknown or not 1 <= len(lesion_regions) <= 3 or len(set(lesion_regions)) != len(lesion_regions):
            raise ValueError(f"lesion_regions must be 1-3 distinct names of {LESION_REGIONS[modality]} for "
                             f"{modality!r}, got {lesion_regions!r}")
    rng = np.random.default_rng([seed, MODALITIES.index(modality)])

    with _single_threaded_blas():
        anatomy, image, paint, finish = _BUILDERS[modality](rng, size)
        regions = region_masks(anatomy, modality)
        placed = _place_lesions(rng, modality, regions, lesion_regions, distractors)
        lesion_names, distractor_names, lesion_blobs, distractor_blobs = placed
        tex = _paint_texture(rng, size)
        for blob in lesion_blobs + distractor_blobs:
            image = paint(image, _soft(blob), tex)
        image = finish(image).astype(np.float32)

    lesion = np.zeros((size, size), np.uint8)
    for blob in lesion_blobs:
        lesion[blob] = 1
    distractor = np.zeros((size, size), np.uint8)
    for blob in distractor_blobs:
        distractor[blob] = 1
    return Phantom2D(
        image=image,
        lesion=lesion,
        anatomy=anatomy,
        distractor=distractor,
        report=_report(modality, lesion_names),
        modality=modality,
        lesion_regions=lesion_names,
        distractor_regions=distractor_names,
        seed=seed,
    )


def _with_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """``(C, H, W)`` -> the requested channels: RGB to grey (:func:`rgb_to_grey`), grey repeated to RGB, or as is."""
    if channels == 1 and image.shape[0] == 3:
        return rgb_to_grey(image)
    if channels == 3 and image.shape[0] == 1:
        return np.repeat(image, 3, axis=0)
    return image


class PhantomDataset2D(Dataset):
    """A map-style data set of 2D phantoms, all generated up front (about 1000 images of 128^2 in a few
    seconds on a laptop CPU).

    Item ``i`` has modality ``modalities[i % len(modalities)]`` (the modalities cycle, so they are
    balanced) and is generated from the seed ``SeedSequence([seed, i])``: it depends only on
    ``(seed, i, its modality, size)``, so two data sets built with the same arguments are identical, and a
    longer data set starts with the items of a shorter one.

    Args:
        n: number of images, >= 1.
        modalities: modality names (each one of :data:`MODALITIES`); a single string is one modality.
        size: height = width, >= 32.
        seed: non-negative int.
        channels: ``None`` keeps each modality's native channels (1, or 3 for ``derm``); then a mixed
            ``derm`` + grey data set cannot be stacked into one batch by the default collate -- pick
            ``channels=3`` (grey images repeated to RGB) or ``channels=1`` (``derm`` converted to grey
            with :func:`rgb_to_grey`) for that.

    Items (dict):
        ``image`` float32 ``(C, H, W)`` in [0, 1]; ``mask`` float32 ``(1, H, W)`` in {0, 1} (the true
        lesions); ``anatomy`` int64 ``(H, W)`` (class ids of that item's modality, see
        :data:`ANATOMY_CLASSES`); ``text`` str (the report); ``modality`` int (index into
        :data:`MODALITIES`); ``modality_name`` str; ``index`` int.

    Attributes:
        phantoms: the :class:`Phantom2D` objects (with distractor masks and region names).
        reports: ``list[str]``, the report of each item.
        modality_labels: ``list[int]``, the modality index of each item.

    Example:
        >>> ds = PhantomDataset2D(n=10, modalities=("cxr", "derm"), size=64, channels=1)
        >>> item = ds[1]
        >>> item["image"].shape, item["modality_name"], ds.modality_labels[:2]
        (torch.Size([1, 64, 64]), 'derm', [0, 4])
    """

    def __init__(
        self,
        *,
        n: int,
        modalities: Sequence[str] | str = ("cxr",),
        size: int = 128,
        seed: int = 0,
        channels: int | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if isinstance(modalities, str):
            modalities = (modalities,)
        modalities = tuple(modalities)
        if not modalities:
            raise ValueError(f"modalities must name at least one of {MODALITIES}, got an empty sequence")
        for m in modalities:
            _check_modality(m)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        self.n = int(n)
        self.modalities = modalities
        self.size = _check_size(size)
        self.seed = _check_seed(seed)
        self.channels = channels
        self.phantoms: list[Phantom2D] = []
        self._images: list[np.ndarray] = []
        for i in range(self.n):
            modality = modalities[i % len(modalities)]
            ph = make_phantom_2d(modality=modality, seed=_item_seed(self.seed, i), size=self.size)
            self.phantoms.append(ph)
            self._images.append(_with_channels(ph.image, channels))
        self.reports: list[str] = [ph.report for ph in self.phantoms]
        self.modality_labels: list[int] = [MODALITIES.index(ph.modality) for ph in self.phantoms]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for a data set of {self.n} items")
        index = index % self.n
        ph = self.phantoms[index]
        return {
            "image": torch.from_numpy(self._images[index].copy()),
            "mask": torch.from_numpy(ph.lesion[None].astype(np.float32)),
            "anatomy": torch.from_numpy(ph.anatomy.astype(np.int64)),
            "text": ph.report,
            "modality": self.modality_labels[index],
            "modality_name": ph.modality,
            "index": index,
        }


class PhantomFindingSet(Dataset):
    """A labelled finding-classification set of one modality, for zero-shot classification and linear probing.

    The phantom counterpart of the classification benchmarks of MedMoE's Tables 1-2 (*Chapter 2, MedMoE*).
    Images have no distractor, so the label is unambiguous from the image. Two tasks:

    * ``task="region"`` -- "where is the lesion?": class ``c`` is the named region
      ``LESION_REGIONS[modality][c]`` (6 classes for ``cxr``/``ct``/``mri``, 5 for ``us``/``derm``) and each image
      has exactly one lesion, in that region;
    * ``task="count"`` -- "how many lesions?": class ``c`` is ``c + 1`` lesions (3 classes) in random regions.

    The class prompts are the reports a training image with that finding would have: ``prompts[c]`` lists every
    such report (one for a region; one per combination of regions for a count, to be averaged as a prompt
    ensemble), e.g. ``"Unilateral pulmonary infection, one infected area, upper left lung."``.

    Args:
        modality: one of :data:`MODALITIES`.
        n_per_class: images per class (balanced classes), >= 1.
        task: ``"region"`` or ``"count"``.
        size: image side, >= 32.
        seed: item ``i`` comes from ``SeedSequence([seed, 7919, i])`` -- a stream no :class:`PhantomDataset2D`
            uses, so a finding set never repeats a training image of the same seed.
        channels: ``None``, 1 or 3, as in :class:`PhantomDataset2D`.

    Items (dict): ``image`` float32 ``(C, H, W)``; ``label`` int; ``modality`` int; ``index`` int.
    Attributes: ``classes`` (names), ``prompts`` (per class, a tuple of reports), ``labels``.

    Example:
        >>> fs = PhantomFindingSet(modality="us", n_per_class=2, size=64)
        >>> len(fs), fs.classes[fs[3]["label"]], fs.prompts[0]
        (10, 'lower right quadrant', ('Hypoechoic lesion, one lesion, upper left quadrant.',))
        >>> PhantomFindingSet(modality="cxr", n_per_class=1, task="count", size=64).classes
        ('one lesion', 'two lesions', 'three lesions')
    """

    def __init__(self, *, modality: str, n_per_class: int, task: str = "region", size: int = 128, seed: int = 0,
                 channels: int | None = None) -> None:

        modality = _check_modality(modality)
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
            raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
        if task not in ("region", "count"):
            raise ValueError(f"task must be 'region' or 'count', got {task!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        self.modality, self.task = modality, task
        self.size = _check_size(size)
        self.seed = _check_seed(seed)
        regions = LESION_REGIONS[modality]
        if task == "region":
            self.classes: tuple[str, ...] = regions
            self.prompts: tuple[tuple[str, ...], ...] = tuple((_report(modality, (c,)),) for c in regions)
        else:
            self.classes = ("one lesion", "two lesions", "three lesions")
            self.prompts = tuple(tuple(_report(modality, combo) for combo in itertools.combinations(regions, n))
                                 for n in (1, 2, 3))
        self.labels: list[int] = [c for _ in range(int(n_per_class)) for c in range(len(self.classes))]
        self._images: list[np.ndarray] = []
        for i, c in enumerate(self.labels):
            item_seed = _item_seed(self.seed, 7919, i)
            if task == "region":
                where = (regions[c],)
            else:
                pick = np.random.default_rng(item_seed).permutation(len(regions))[:c + 1]
                where = tuple(regions[j] for j in sorted(pick))
            ph = make_phantom_2d(modality=modality, seed=item_seed, size=self.size, lesion_regions=where,
                                 distractors=False)
            self._images.append(_with_channels(ph.image, channels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a set of {len(self)} items")
        index = index % len(self)
        return {"image": torch.from_numpy(self._images[index].copy()), "label": self.labels[index],
                "modality": MODALITIES.index(self.modality), "index": index}


# ----------------------------------------------------------------------------------------------------------
# 3D phantoms
# ----------------------------------------------------------------------------------------------------------

CLASSES_3D: tuple[str, ...] = (
    "background",
    "liver",
    "spleen",
    "left kidney",
    "right kidney",
    "pancreas",
    "liver tumour",
)
"""Label ids of :func:`make_phantom_3d` (index = id)."""

HU_3D: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "soft tissue": 40.0,
    "bone": 450.0,
    "aorta": 160.0,
    "liver": 100.0,
    "spleen": 115.0,
    "left kidney": 170.0,
    "right kidney": 170.0,
    "pancreas": 80.0,
    "liver tumour": 35.0,
}
"""Mean Hounsfield units of each tissue (portal-venous-phase-like contrast; the tumour is hypodense)."""

SOURCE_DATASETS: dict[str, tuple[str, ...]] = {
    "liver_tumour": ("liver", "liver tumour"),
    "kidney": ("left kidney", "right kidney"),
    "spleen": ("spleen",),
    "multi_organ": ("liver", "spleen", "left kidney", "right kidney", "pancreas"),
}
"""Partially labelled source data sets: the classes each one annotates. In a source's label volumes every
class it does not annotate is background (0), with one exception that mirrors real multi-organ
annotations: a source that labels "liver" but not "liver tumour" labels tumour voxels as liver (the
tumour is part of the organ), so its livers have no holes."""

# Organ layout in normalised (z, y, x) coordinates: centre, semi-axes, in-plane rotation. z runs head to
# feet, y anterior to posterior, x from the patient's right (image left) to the patient's left.
_ORGANS_3D: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "liver": ((-0.30, -0.05, -0.40), (0.45, 0.45, 0.38), 0.2),
    "spleen": ((-0.35, 0.25, 0.55), (0.30, 0.26, 0.17), -0.4),
    "left kidney": ((0.15, 0.35, 0.40), (0.30, 0.17, 0.14), 0.3),
    "right kidney": ((0.25, 0.35, -0.40), (0.30, 0.17, 0.14), -0.3),
    "pancreas": ((0.00, 0.08, 0.10), (0.12, 0.10, 0.38), 0.15),
}


@dataclass(eq=False)
class Phantom3D:
    """One 3D CT-like phantom.

    Attributes:
        volume: ``(D, H, W)`` float32 in Hounsfield units (not windowed).
        label: ``(D, H, W)`` uint8, ids into :data:`CLASSES_3D` (all classes labelled).
        has_tumour: whether a liver tumour was drawn.
        seed: the seed it was generated from.
    """

    volume: np.ndarray
    label: np.ndarray
    has_tumour: bool
    seed: int


@lru_cache(maxsize=4)
def _grid3d(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    zz, yy, xx = np.meshgrid(t, t, t, indexing="ij")
    for a in (zz, yy, xx):
        a.flags.writeable = False
    return zz, yy, xx


def make_phantom_3d(*, seed: int, size: int = 64) -> Phantom3D:
    """Generate one abdominal CT-like volume with organ labels and (in about 70 % of volumes) a liver tumour.

    The body is an elliptic cylinder (subcutaneous fat ring; inside it soft tissue with patches of
    visceral fat; air outside) with a spine and an aorta (unlabelled). Organs are ellipsoids with random
    jitter of centre and size and a smooth random deformation of their surface; an organ never
    overwrites one drawn before it. The tumour is a deformed ellipsoid clipped to the liver. Gaussian
    noise (sigma 12 HU) is added. Tissue values: :data:`HU_3D`. Axes: ``D`` head to feet, ``H``
    anterior to posterior, ``W`` patient's right to left.

    Args:
        seed: non-negative int; the output is a deterministic function of ``(seed, size)``.
        size: edge length of the cubic volume, >= 32.

    Returns:
        :class:`Phantom3D` with ``volume`` float32 ``(size, size, size)`` in HU and ``label`` uint8.

    Example:
        >>> ph = make_phantom_3d(seed=0, size=32)
        >>> ph.volume.shape, int(ph.label.max()) <= len(CLASSES_3D) - 1
        ((32, 32, 32), True)
    """
    seed = _check_seed(seed)
    size = _check_size(size)
    with _single_threaded_blas():
        return _make_phantom_3d(seed, size)


def _make_phantom_3d(seed: int, size: int) -> Phantom3D:
    rng = np.random.default_rng([seed, 1000])  # 1000: a stream of its own (2D uses 0-4)
    zz, yy, xx = _grid3d(size)
    shape = (size, size, size)

    body_r = np.sqrt((yy / 0.72) ** 2 + (xx / 0.92) ** 2)[0]  # same cross-section on every slice
    hu = np.full(shape, HU_3D["air"], np.float32)
    hu[:, body_r < 1.0] = HU_3D["fat"]
    # Inside the fat ring: soft tissue (muscle, bowel) with patches of visceral fat.
    visceral_fat = _smooth_field(rng, shape, cells=10) < -0.9
    inside = np.broadcast_to(body_r < 0.88, shape)
    hu[inside] = HU_3D["soft tissue"]
    hu[inside & visceral_fat] = HU_3D["fat"]
    y2, x2 = yy[0], xx[0]
    spine = (y2 - 0.5) ** 2 + x2**2 < 0.12**2
    aorta = (y2 - 0.28) ** 2 + (x2 - 0.05) ** 2 < 0.06**2
    hu[:, spine] = HU_3D["bone"]
    hu[:, aorta] = HU_3D["aorta"]

    label = np.zeros(shape, np.uint8)
    deform = _smooth_field(rng, shape, cells=5)
    for name, (centre, radii, angle) in _ORGANS_3D.items():
        cz, cy, cx = (c + rng.uniform(-0.05, 0.05) for c in centre)
        rz, ry, rx = (r * rng.uniform(0.9, 1.1) for r in radii)
        a = angle + rng.uniform(-0.1, 0.1)
        dy, dx = yy - cy, xx - cx
        c, s = math.cos(a), math.sin(a)
        u, v = c * dx + s * dy, -s * dx + c * dy
        rho = np.sqrt(((zz - cz) / rz) ** 2 + (v / ry) ** 2 + (u / rx) ** 2)
        organ = (rho < 1.0 + 0.12 * deform) & (label == 0)
        label[organ] = CLASSES_3D.index(name)
        hu[organ] = HU_3D[name]

    liver = label == CLASSES_3D.index("liver")
    has_tumour = bool(rng.random() < 0.7) and bool(liver.any())
    if has_tumour:
        idx = np.flatnonzero(liver)
        centre = idx[rng.integers(idx.size)]
        cz, cy, cx = (zz.flat[centre], yy.flat[centre], xx.flat[centre])
        r = rng.uniform(0.08, 0.16)
        rho = np.sqrt((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) / r
        tumour = (rho < 1.0 + 0.25 * _smooth_field(rng, shape, cells=6)) & liver
        tumour.flat[centre] = True
        label[tumour] = CLASSES_3D.index("liver tumour")
        hu[tumour] = HU_3D["liver tumour"]

    hu = hu + rng.normal(0.0, 12.0, shape).astype(np.float32)
    return Phantom3D(volume=hu.astype(np.float32), label=label, has_tumour=has_tumour, seed=seed)


def ct_prompt(name: str) -> str:
    """The CLIP-Driven Universal Model's text prompt for a class: ``"A computerized tomography of a {name}"``.

    Example:
        >>> ct_prompt("liver")
        'A computerized tomography of a liver'
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    return f"A computerized tomography of a {name}"


class PhantomVolumeDataset(Dataset):
    """One "partially labelled" source data set of 3D phantoms (MoME / CLIP-Driven Universal Model setting).

    The volumes are generated up front. Item ``i`` comes from the seed ``SeedSequence([seed, s, i])``
    with ``s`` the source's position in :data:`SOURCE_DATASETS`, so different sources hold different
    "patients" even with the same ``seed``.

    Args:
        n: number of volumes, >= 1.
        source: a key of :data:`SOURCE_DATASETS`; only its classes are kept in ``label``.
        seed: non-negative int.
        size: edge length, >= 32.
        hu_window: ``(low, high)`` HU; the image is ``clip(hu, low, high)`` scaled to [0, 1] (the Universal
            Model's abdominal window is the default).

    Items (dict):
        ``image`` float32 ``(1, D, H, W)`` in [0, 1]; ``label`` int64 ``(D, H, W)`` ids into
        :data:`CLASSES_3D`, classes the source does not annotate set to 0 (tumour to liver where the
        source labels the liver but not the tumour, see :data:`SOURCE_DATASETS`); ``labelled`` bool
        ``(len(CLASSES_3D),)``, True for background and the source's classes; ``source`` str; ``index`` int.

    Example:
        >>> ds = PhantomVolumeDataset(n=2, source="kidney", size=32)
        >>> item = ds[0]
        >>> item["image"].shape, item["labelled"].tolist()
        (torch.Size([1, 32, 32, 32]), [True, False, False, True, True, False, False])
    """

    def __init__(
        self,
        *,
        n: int,
        source: str,
        seed: int = 0,
        size: int = 64,
        hu_window: tuple[float, float] = (-175.0, 250.0),
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if source not in SOURCE_DATASETS:
            raise ValueError(f"source must be one of {tuple(SOURCE_DATASETS)}, got {source!r}")
        if len(hu_window) != 2 or not hu_window[0] < hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window!r}")
        self.n = int(n)
        self.source = source
        self.seed = _check_seed(seed)
        self.size = _check_size(size)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        kept = [CLASSES_3D.index(c) for c in SOURCE_DATASETS[source]]
        self.labelled = np.zeros(len(CLASSES_3D), bool)
        self.labelled[0] = True
        self.labelled[kept] = True
        keep_lut = np.where(self.labelled, np.arange(len(CLASSES_3D)), 0).astype(np.uint8)
        liver, tumour = CLASSES_3D.index("liver"), CLASSES_3D.index("liver tumour")
        if self.labelled[liver] and not self.labelled[tumour]:
            keep_lut[tumour] = liver  # the tumour is part of the liver in a liver-only annotation
        lo, hi = self.hu_window
        source_id = tuple(SOURCE_DATASETS).index(source)
        self._images: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.has_tumour: list[bool] = []
        for i in range(self.n):
            ph = make_phantom_3d(seed=_item_seed(self.seed, source_id, i), size=self.size)
            self._images.append(((np.clip(ph.volume, lo, hi) - lo) / (hi - lo)).astype(np.float32))
            self._labels.append(keep_lut[ph.label])
            self.has_tumour.append(ph.has_tumour)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for a data set of {self.n} items")
        index = index % self.n
        return {
            "image": torch.from_numpy(self._images[index][None].copy()),
            "label": torch.from_numpy(self._labels[index].astype(np.int64)),
            "labelled": torch.from_numpy(self.labelled.copy()),
            "source": self.source,
            "index": index,
        }

r"""Offline datasets for the experiments, and entry points to real data on a local disk.

Default data (nothing is downloaded, every image is a deterministic function of ``(seed, index)``):

- **CT**: random-ellipse phantoms from deepinv's own generator
  (:class:`deepinv.utils.RandomPhantomDataset`), made reproducible by :class:`SeededPhantomDataset`.
- **Deblurring**: the CT phantoms.
- **MRI**: procedural *head* phantoms (:func:`head_phantom`): an elliptical skull ring, a brain of
  soft-tissue intensity, a darker "white-matter" region and random interior ellipses
  ("ventricles", "lesions") drawn with deepinv's ellipse generator, as a 2-channel (real,
  imaginary) image with zero imaginary part, as deepinv's :class:`deepinv.physics.MRI` expects.

Why procedural head phantoms rather than the MNI ICBM152 T1 template shipped inside the nilearn
wheel: the template is a *single* brain volume, so its ~190 axial slices are strongly correlated
(a held-out set of neighbouring slices is not an independent test set), its number of images is
fixed, and it needs two extra packages (``nilearn``, ``nibabel``, ~10 MB). Procedural phantoms are
independent, of any size and count, reproducible from a seed and need nothing beyond deepinv, which
is what a CPU reproduction of the paper's *relative* claims needs. Real anatomy remains available
through :func:`fastmri_slices` (and :func:`lidc_idri_slices` for CT) and, offline, through the
``[realdata]`` extra (``pip install deepinv-deq[realdata]``: nilearn, nibabel, pydicom,
pydicom-data):

- :func:`mni_slices`: the MNI ICBM152 2009a symmetric T1 template shipped inside the nilearn wheel
  (``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, 1 mm, 197 x 233 x
  189), read with nibabel, as MRI training, validation and test images (``mri_data="mni"`` of the
  experiments). Equivariant imaging trains on measurements only, so training on real images needs
  no ground truth. **Caveat**: one brain, whose neighbouring axial slices are strongly correlated;
  the splits are slabs separated by gaps of several slices (:func:`gapped_splits`), which lowers
  but does not remove the correlation between training and test images: results on it measure
  in-subject generalisation, not generalisation to new subjects.
  *Licence*: nilearn's description of the template (``nilearn/datasets/description/
  icbm152_2009.rst``) gives its licence as "unknown" and cites Fonov et al., NeuroImage 2011 and
  2009, and Collins et al. 1999; the distributor (McConnell Brain Imaging Centre, MNI, McGill
  University, http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009) releases the ICBM 2009
  templates under a permissive notice (copyright Vladimir Fonov, Louis Collins and the MNI; use,
  copy, modify and distribute freely provided the copyright notice appears in all copies, no
  warranty). Cite those papers in any result that uses it. The file is read from the installed
  nilearn package and never redistributed by this project.
- :func:`real_ct_test_images`: real CT slices read offline through ``pydicom.data`` (a 512 x 512
  head CT ``693_UNCR.dcm`` and the two frames of the 512 x 512 brain perfusion CT
  ``eCT_Supplemental.dcm`` from the ``pydicom-data`` package, MIT licence; pydicom's own 128 x 128
  ``CT_small.dcm``), as a real-CT *test* set for figures.

Every dataset here returns bare image tensors ``x`` of shape ``(C, H, W)``, as
:class:`deepinv.Trainer` expects with ``online_measurements=True``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ._validation import check_choice, check_int

KINDS = ("ct", "mri")
#: images of a task that has no data of its own: deblurring uses the 1-channel CT phantoms
_IMAGES_OF = {"deblur": "ct"}


@contextlib.contextmanager
def numpy_seed(*entropy: int):
    r"""Seed numpy's *global* RNG from ``entropy`` for the duration of the block, then restore it.

    deepinv's phantom generators draw from ``np.random``; this makes them a pure function of
    ``entropy`` without disturbing the caller's random stream.

    :param int entropy: integers combined by :class:`numpy.random.SeedSequence`.
    """
    state = np.random.get_state()
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def ellipse_phantom(size: int) -> torch.Tensor:
    r"""One random-ellipse phantom of shape ``(1, size, size)`` in :math:`[0, 1]`, drawn by deepinv's
    :class:`deepinv.utils.RandomPhantomDataset` from numpy's global RNG (seed it with
    :func:`numpy_seed`).

    :param int size: image side.
    """
    from deepinv.utils import RandomPhantomDataset

    with warnings.catch_warnings():  # deepinv calls torch.meshgrid without `indexing`
        warnings.simplefilter("ignore", UserWarning)
        return RandomPhantomDataset(length=1, size=size, use_dict_output=True)[0]["x"].float()


#: width of the Gaussian blur of :func:`head_phantom`, as a fraction of the image side
HEAD_SMOOTHING = 1.0 / 48


def head_phantom(size: int, smoothing: float = HEAD_SMOOTHING) -> torch.Tensor:
    r"""One random head phantom of shape ``(2, size, size)`` (real, imaginary) in :math:`[0, 1]`.

    The magnitude image is

    .. math::

        x = 0.95\,\mathbb{1}_{\text{skull}} + \mathbb{1}_{\text{brain}}\big(a + b\,
        \mathbb{1}_{\text{WM}} + e\big)

    with a random elliptical skull ring, brain tissue level :math:`a\sim U(0.35, 0.5)`, a white-matter
    ellipse of contrast :math:`b\sim U(0.1, 0.25)` and :math:`e` the interior ellipses of deepinv's
    phantom generator (``interior=True``), blurred by a Gaussian of standard deviation
    ``smoothing * size`` pixels: the finite resolution (partial-volume effect) of an acquisition,
    without which the piecewise-constant phantom puts far more energy into high frequencies than
    anatomy does (its zero-filled 4x reconstructions would score ~16 dB instead of the 20+ dB of
    real acquisitions). Draws from numpy's global RNG (seed it with :func:`numpy_seed`); the
    imaginary channel is zero.

    :param int size: image side.
    :param float smoothing: blur width as a fraction of the side (``0``: none). Default: ``1/48``.
    """
    from deepinv.utils.phantoms import generate_random_phantom

    r = np.random
    t = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    theta = r.uniform(-0.3, 0.3)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    ax, ay = r.uniform(0.68, 0.85), r.uniform(0.78, 0.92)
    rho = (u / ax) ** 2 + (v / ay) ** 2
    thickness = r.uniform(0.12, 0.2)
    head = rho <= 1
    brain = rho <= (1 - thickness) ** 2
    skull = head & ~brain
    wm = ((u / (0.7 * ax)) ** 2 + ((v + 0.05) / (0.75 * ay)) ** 2) <= (1 - thickness) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        detail = generate_random_phantom(size, n_ellipse=12, interior=True) * 0.6
    x = 0.95 * skull.float() + brain.float() * (
        r.uniform(0.35, 0.5) + r.uniform(0.1, 0.25) * wm.float() + detail.T
    )
    x = _gaussian_blur(x.clamp(0, 1), smoothing * size)
    return torch.stack([x, torch.zeros_like(x)])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    # separable Gaussian blur of a 2D image (replicate padding); identity for sigma <= 0
    if sigma <= 0:
        return x
    half = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-half, half + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    y = torch.nn.functional.pad(x[None, None], (half, half, half, half), mode="replicate")
    y = torch.nn.functional.conv2d(y, g.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(y, g.view(1, 1, -1, 1))[0, 0]


class SeededPhantomDataset(Dataset):
    r"""Deterministic dataset of procedural phantoms: item :math:`i` is a function of
    ``(seed, split, i)`` only, whatever the order of access or the worker that draws it.

    :param int length: number of images.
    :param int size: image side (square images).
    :param str kind: ``"ct"`` (deepinv's random ellipses, 1 channel) or ``"mri"`` (head phantoms,
        2 channels).
    :param int seed: base seed.
    :param int split: stream index, so that train (0) and test (1) images never coincide.
    :param bool cache: keep generated images in memory (default ``True``).

    |sep|

    :Example:

    >>> from deepinv_deq.data import SeededPhantomDataset
    >>> a = SeededPhantomDataset(4, size=16, kind="ct", seed=3)
    >>> b = SeededPhantomDataset(4, size=16, kind="ct", seed=3, cache=False)
    >>> a[2].shape, bool((a[2] == b[2]).all())
    (torch.Size([1, 16, 16]), True)
    """

    def __init__(
        self,
        length: int,
        size: int = 128,
        kind: str = "ct",
        seed: int = 0,
        split: int = 0,
        cache: bool = True,
    ):
        owner = "SeededPhantomDataset"
        self.length = check_int(owner, "length", length, 1)
        self.size = check_int(owner, "size", size, 8)
        self.kind = check_choice(owner, "kind", kind, KINDS)
        self.seed = check_int(owner, "seed", seed, 0)
        self.split = check_int(owner, "split", split, 0)
        self._cache = {} if cache else None

    @property
    def channels(self) -> int:
        r"""Number of image channels (1 for CT, 2 for MRI)."""
        return 1 if self.kind == "ct" else 2

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} images.")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        with numpy_seed(self.seed, self.split, index):
            x = ellipse_phantom(self.size) if self.kind == "ct" else head_phantom(self.size)
        if self._cache is not None:
            self._cache[index] = x
        return x


def phantom_splits(kind: str, n_train: int, n_test: int, size: int, seed: int = 0):
    r"""Disjoint train and test sets of :class:`SeededPhantomDataset`.

    :param str kind: ``"ct"`` or ``"mri"``.
    :param int n_train: training images.
    :param int n_test: held-out images.
    :param int size: image side.
    :param int seed: base seed.
    :return: ``(train, test)`` datasets.
    """
    return (
        SeededPhantomDataset(n_train, size=size, kind=kind, seed=seed, split=0),
        SeededPhantomDataset(n_test, size=size, kind=kind, seed=seed, split=1),
    )


# ------------------------------------------------------------------------------------------------
# real data from a local folder


def _check_folder(
    name: str, root, required: tuple[str, ...] = (), pattern: str | None = None
) -> Path:
    if root is None:
        raise ValueError(f"{name}: a local folder is required (root=None); nothing is downloaded.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: the folder '{root}' does not exist.")
    for fname in required:
        if not (root / fname).exists():
            raise FileNotFoundError(
                f"{name}: '{root}' is not a valid dataset folder: '{fname}' is missing."
            )
    if pattern is not None and not any(root.glob(pattern)):
        raise FileNotFoundError(
            f"{name}: '{root}' is not a valid dataset folder: no file matches '{pattern}'."
        )
    return root


def _resize(x: torch.Tensor, size: int, normalise: bool = True) -> torch.Tensor:
    # centre square crop, bilinear resize, scaling to [0, 1] (or clamping, normalise=False)
    h, w = x.shape[-2:]
    m = min(h, w)
    top, left = (h - m) // 2, (w - m) // 2
    x = x[..., top : top + m, left : left + m].float()
    x = torch.nn.functional.interpolate(
        x[None], size=(size, size), mode="bilinear", antialias=True
    )[0]
    if not normalise:
        return x.clamp(0, 1)
    x = x - x.amin()
    return x / x.amax().clamp_min(1e-12)


class _ImageOnly(Dataset):
    # maps a deepinv dataset item to a single image tensor (C, size, size) in [0, 1]
    def __init__(self, base, size: int, channels: int):
        self.base, self.size, self.channels = base, size, channels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        item = self.base[index]
        x = (
            item["x"]
            if isinstance(item, dict)
            else (item[0] if isinstance(item, (tuple, list)) else item)
        )
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if x.ndim == 2:
            x = x[None]
        x = _resize(x[:1], self.size)
        if self.channels == 2:
            x = torch.cat([x, torch.zeros_like(x)])
        return x


def lidc_idri_slices(root, size: int = 128) -> Dataset:
    r"""CT slices of LIDC-IDRI from a local folder, through :class:`deepinv.datasets.LidcIdriSliceDataset`.

    Images are centre-cropped, resized to ``size`` and scaled to :math:`[0, 1]`. The folder must hold
    ``metadata.csv`` and the DICOM series it lists (the layout of the TCIA download); reading them
    needs ``pandas`` and ``pydicom``.

    :param str root: the dataset folder.
    :param int size: output image side.
    :raises FileNotFoundError: if the folder or its ``metadata.csv`` is missing.
    :raises ImportError: if ``pandas`` or ``pydicom`` is not installed.
    """
    size = check_int("lidc_idri_slices", "size", size, 8)
    root = _check_folder("lidc_idri_slices", root, required=("metadata.csv",))
    for module in ("pandas", "pydicom"):
        try:
            __import__(module)
        except ImportError:
            raise ImportError(
                f"lidc_idri_slices: reading LIDC-IDRI needs '{module}' (pip install pandas pydicom)."
            ) from None
    from deepinv.datasets import LidcIdriSliceDataset

    base = LidcIdriSliceDataset(root=str(root), use_dict_output=True)
    if len(base) == 0:
        raise FileNotFoundError(f"lidc_idri_slices: no .dcm slice found under '{root}'.")
    return _ImageOnly(base, size, channels=1)


def fastmri_slices(root, size: int = 128, slice_index="middle") -> Dataset:
    r"""Single-coil fastMRI slices from a local folder of ``.h5`` volumes, through
    :class:`deepinv.datasets.FastMRISliceDataset`.

    The ground truth of each slice (``reconstruction_esc`` or ``reconstruction_rss``) is
    centre-cropped, resized to ``size``, scaled to :math:`[0, 1]` and returned as a 2-channel
    (real, imaginary = 0) image; measurements are then simulated by the experiment's physics.

    :param str root: folder of fastMRI ``.h5`` files.
    :param int size: output image side.
    :param str, int slice_index: slices kept per volume (see deepinv's class; default ``"middle"``).
    :raises FileNotFoundError: if the folder is missing or holds no ``.h5`` file.
    :raises ValueError: if a file holds no ground-truth reconstruction.
    """
    size = check_int("fastmri_slices", "size", size, 8)
    root = _check_folder("fastmri_slices", root, pattern="*.h5")
    import h5py

    for fname in sorted(root.glob("*.h5")):
        try:
            with h5py.File(fname, "r") as f:
                keys = set(f.keys())
        except OSError as e:
            raise ValueError(
                f"fastmri_slices: '{fname}' is not a readable HDF5 file ({e})."
            ) from None
        if "kspace" not in keys or not keys & {"reconstruction_esc", "reconstruction_rss"}:
            raise ValueError(
                f"fastmri_slices: '{fname}' must hold 'kspace' and 'reconstruction_esc' or "
                f"'reconstruction_rss' (found {sorted(keys)})."
            )
    from deepinv.datasets import FastMRISliceDataset

    base = FastMRISliceDataset(
        root=str(root), slice_index=slice_index, transform=_identity_transform, use_dict_output=True
    )
    return _ImageOnly(base, size, channels=2)


def _identity_transform(target, kspace, **params):
    # keep deepinv's loader from cropping/normalising: we only need the target image
    params.pop("seed", None)
    params.pop("metadata", None)
    return target, kspace, params


def groups_of(dataset) -> list:
    r"""The acquisition each image of a real dataset comes from: the patient for LIDC-IDRI
    (``sample_identifiers[i].patient_id``), the volume file for fastMRI (``samples[i].fname``),
    else the image itself.

    :param dataset: a dataset from :func:`lidc_idri_slices` or :func:`fastmri_slices`.
    :return: one hashable key per image.
    """
    base = getattr(dataset, "base", dataset)
    ids = getattr(base, "sample_identifiers", None)
    if ids is not None and len(ids) == len(dataset) and hasattr(ids[0], "patient_id"):
        return [i.patient_id for i in ids]
    samples = getattr(base, "samples", None)
    if samples is not None and len(samples) == len(dataset) and hasattr(samples[0], "fname"):
        return [str(s.fname) for s in samples]
    return list(range(len(dataset)))


def split_indices(groups: list, counts: tuple[int, ...]) -> list[list[int]]:
    r"""Disjoint index sets of sizes ``counts`` that never split a group (patient or volume).

    Groups are taken in order of first appearance: the first split takes whole groups from the
    start until it has enough images (the last group it touches may be cut, its remaining images
    are discarded), the next split continues with the following group, and so on.

    :param list groups: group key of each image.
    :param tuple counts: the number of images of each split.
    :raises ValueError: if the images (or the groups) are too few.

    |sep|

    :Example:

    >>> from deepinv_deq.data import split_indices
    >>> split_indices(["a", "a", "b", "b", "c", "d"], (3, 2))
    [[0, 1, 2], [4, 5]]
    """
    counts = tuple(int(c) for c in counts)
    if sum(counts) > len(groups):
        raise ValueError(
            f"split_indices: {' + '.join(map(str, counts))} = {sum(counts)} images requested, "
            f"but the dataset holds only {len(groups)}."
        )
    order, members = [], {}
    for i, g in enumerate(groups):
        if g not in members:
            members[g] = []
            order.append(g)
        members[g].append(i)
    out, k = [], 0
    for count in counts:
        chosen = []
        while len(chosen) < count:
            if k >= len(order):
                raise ValueError(
                    f"split_indices: not enough patients/volumes ({len(order)}) for disjoint splits "
                    f"of {counts} images."
                )
            chosen += members[order[k]]
            k += 1
        out.append(chosen[:count])
    return out


def load_dataset(
    source: str,
    kind: str,
    n: int,
    size: int,
    seed: int = 0,
    split: int = 0,
    counts: tuple[int, ...] | None = None,
):
    r"""Images for an experiment: ``source`` is ``"phantoms"`` (default offline data) or a folder of
    real data (LIDC-IDRI for ``kind="ct"``, fastMRI for ``kind="mri"``).

    Splits: 0 = training, 1 = test, 2 = validation. Phantom splits are independent random
    streams. A folder is divided by :func:`split_indices` into disjoint training, test and
    validation sets of ``counts = (n_train, n_test, n_val)`` images (default: ``n`` for the split
    asked for, none for the others), by patient (LIDC-IDRI) or volume (fastMRI).

    Source ``"mni"`` (MRI only): the axial slices of the MNI ICBM152 T1 template, split by
    :func:`mni_slices` into training, validation and test slabs separated by gaps.

    :param str source: ``"phantoms"``, ``"mni"`` or a path.
    :param str kind: ``"ct"`` or ``"mri"``.
    :param int n: number of images.
    :param int size: image side.
    :param int seed: seed of the phantoms.
    :param int split: 0 (train), 1 (test) or 2 (validation).
    :param tuple counts: the sizes of all the splits of the experiment (folders only).
    :raises ValueError: if the folder holds fewer images (or patients/volumes) than the splits need.
    """
    kind = check_choice("load_dataset", "kind", _IMAGES_OF.get(kind, kind), KINDS)
    if split not in (0, 1, 2):
        raise ValueError(
            f"load_dataset: 'split' must be 0 (train), 1 (test) or 2 (val), got {split!r}."
        )
    if source == "phantoms":
        return SeededPhantomDataset(n, size=size, kind=kind, seed=seed, split=split)
    if source == "mni":
        if kind != "mri":
            raise ValueError("load_dataset: source 'mni' holds MRI images only (kind='mri').")
        if counts is None or counts[split] != n:
            raise ValueError(
                f"load_dataset: source 'mni' needs counts = (n_train, n_test, n_val) with "
                f"counts[{split}] = n = {n}, got {counts!r}."
            )
        train, test, val = (tuple(counts) + (0, 0))[:3]
        parts = mni_slices((train, val, test), size)
        return parts[{0: 0, 2: 1, 1: 2}[split]]
    full = lidc_idri_slices(source, size) if kind == "ct" else fastmri_slices(source, size)
    if counts is None:
        counts = tuple(n if k == split else 0 for k in range(3))
    if counts[split] != n:
        raise ValueError(f"load_dataset: counts[{split}] = {counts[split]} but n = {n}.")
    # in the folder's order: training, then validation, then test groups
    train, test, val = counts[0], counts[1], counts[2] if len(counts) > 2 else 0
    parts = split_indices(groups_of(full), (train, val, test))
    index = {0: parts[0], 2: parts[1], 1: parts[2]}[split]
    return torch.utils.data.Subset(full, index)


# ------------------------------------------------------------------------------------------------
# real data shipped inside Python packages (the [realdata] extra)

#: the MNI ICBM152 2009a symmetric T1 template inside the nilearn wheel
MNI_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: real CT slices read through ``pydicom.data.get_testdata_file``: (file, description)
REAL_CT_FILES = (
    ("693_UNCR.dcm", "head CT, 512 x 512 (pydicom-data)"),
    ("eCT_Supplemental.dcm", "brain perfusion CT, 2 frames of 512 x 512 (pydicom-data)"),
    ("CT_small.dcm", "CT, 128 x 128 (pydicom)"),
)


def _require(owner: str, *modules: str):
    out = []
    for module in modules:
        try:
            out.append(__import__(module))
        except ImportError:
            raise ImportError(
                f"{owner}: needs '{module}', from the [realdata] extra "
                f"(pip install 'deepinv-deq[realdata]')."
            ) from None
    return out


def gapped_splits(n: int, counts: tuple[int, ...], gap: int, blocks: int = 1) -> list[list[int]]:
    r"""Indices ``0..n-1`` of an ordered stack (e.g. the slices of a volume) split into disjoint
    sets of sizes ``counts``, made of contiguous slabs with at least ``gap`` unused indices
    between any two slabs of different sets.

    Each set is cut into ``blocks`` slabs (sizes differing by at most one) and the slabs are laid
    out in turn, set after set, ``blocks`` times (``blocks=1``: one slab per set, in the order of
    ``counts``), centred in the stack. Interleaving (``blocks > 1``) spreads every set over the
    whole volume, so that no set sees only one end of the anatomy.

    :param int n: number of indices.
    :param tuple counts: size of each set (a set of size 0 gets no slab and no gap).
    :param int gap: unused indices between consecutive slabs.
    :param int blocks: slabs per set.
    :raises ValueError: if the sets and gaps need more than ``n`` indices.

    |sep|

    :Example:

    >>> from deepinv_deq.data import gapped_splits
    >>> gapped_splits(12, (4, 2, 2), gap=1)
    [[1, 2, 3, 4], [6, 7], [9, 10]]
    >>> gapped_splits(10, (4, 2), gap=1, blocks=2)
    [[0, 1, 5, 6], [3, 8]]
    """
    n = check_int("gapped_splits", "n", n, 0)
    gap = check_int("gapped_splits", "gap", gap, 0)
    blocks = check_int("gapped_splits", "blocks", blocks, 1)
    counts = [check_int("gapped_splits", "counts", int(c), 0) for c in counts]
    slabs = []  # (set, size) in layout order
    for b in range(blocks):
        for k, c in enumerate(counts):
            size = c // blocks + (1 if b < c % blocks else 0)
            if size:
                slabs.append((k, size))
    used = sum(counts) + gap * max(0, len(slabs) - 1)
    if used > n:
        raise ValueError(
            f"gapped_splits: sets of {counts} images with gaps of {gap} need {used} slices, but "
            f"the stack holds only {n}; ask for fewer images or a smaller gap."
        )
    out = [[] for _ in counts]
    start = (n - used) // 2
    for k, size in slabs:
        out[k] += list(range(start, start + size))
        start += size + gap
    return out


def nonempty_slices(volume: torch.Tensor, threshold: float = 0.1, area: float = 0.02) -> list[int]:
    r"""Indices of the axial slices ``volume[k]`` that hold anatomy: more than ``area`` of their
    pixels above ``threshold`` times the volume's maximum.

    :param torch.Tensor volume: ``(slices, H, W)``.
    :param float threshold: intensity threshold, relative to the maximum.
    :param float area: minimum fraction of pixels above the threshold.
    """
    above = (volume > threshold * volume.max()).float().flatten(1).mean(1)
    return [int(k) for k in torch.nonzero(above > area).flatten()]


@functools.lru_cache(maxsize=1)
def mni_volume() -> torch.Tensor:
    r"""The MNI ICBM152 T1 template from the installed nilearn package, as a ``float32`` tensor of
    axial slices ``(189, 233, 197)`` (inferior to superior; anterior at the top of each slice) in
    :math:`[0, 1]`.

    Read once per process (cached; do not modify the returned tensor).

    :raises ImportError: without nilearn or nibabel (the ``[realdata]`` extra).
    :raises FileNotFoundError: if the nilearn package does not hold the template.
    """
    nilearn, nibabel = _require("mni_volume", "nilearn", "nibabel")
    path = Path(nilearn.__file__).parent / MNI_T1
    if not path.exists():
        raise FileNotFoundError(f"mni_volume: the template is missing from nilearn: '{path}'.")
    data = np.asarray(nibabel.load(str(path)).dataobj, dtype=np.float32)  # (x, y, z), RAS
    volume = torch.from_numpy(data).permute(2, 1, 0).flip(1)  # (z, y, x), anterior up
    return (volume / volume.max()).contiguous()


def mni_slices(
    counts: tuple[int, ...], size: int = 64, gap: int = 5, blocks: int = 2
) -> list[Dataset]:
    r"""Disjoint sets of axial slices of the MNI ICBM152 T1 template (:func:`mni_volume`), as
    2-channel (real, imaginary = 0) MRI images of side ``size`` in :math:`[0, 1]`.

    Only the slices that hold anatomy (:func:`nonempty_slices`) are used; they are split by
    :func:`gapped_splits` into slabs with ``gap`` slices between them. Neighbouring slices are
    correlated (1 mm apart): the gaps lower, but do not remove, the correlation between the sets.

    :param tuple counts: images of each set, e.g. ``(n_train, n_val, n_test)``.
    :param int size: image side (centre square crop, antialiased bilinear resize).
    :param int gap: slices left out between slabs of different sets.
    :param int blocks: slabs per set (interleaved along the volume).
    :return: one dataset per entry of ``counts``.
    """
    size = check_int("mni_slices", "size", size, 8)
    volume = mni_volume()
    keep = nonempty_slices(volume)
    parts = gapped_splits(len(keep), counts, gap, blocks)
    return [_SliceStack(volume, [keep[i] for i in part], size) for part in parts]


class _SliceStack(Dataset):
    # slices of a volume as 2-channel images, resized on first access
    def __init__(self, volume: torch.Tensor, index: list[int], size: int):
        self.images = [
            torch.cat([x := _resize(volume[k][None], size), torch.zeros_like(x)]) for k in index
        ]
        self.slices = list(index)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


def hounsfield_to_attenuation(hu: torch.Tensor) -> torch.Tensor:
    r"""Attenuation-like image in :math:`[0, 1]` from Hounsfield units:
    :math:`\mathrm{clip}\big((\mathrm{HU} + 1000) / 2000, 0, 1\big)`, i.e. the linear attenuation
    relative to water, :math:`\mu/\mu_{\text{water}} = 1 + \mathrm{HU}/1000`, halved (air 0,
    water 0.5, dense bone 1).

    :param torch.Tensor hu: image in Hounsfield units.
    """
    return ((hu + 1000.0) / 2000.0).clamp(0, 1)


def _dicom_hu(ds) -> np.ndarray:
    # stored values -> Hounsfield units (classic header, or an enhanced CT's shared groups)
    pixels = ds.pixel_array.astype(np.float64)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None and "SharedFunctionalGroupsSequence" in ds:
        group = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in group:
            t = group.PixelValueTransformationSequence[0]
            slope, intercept = t.RescaleSlope, t.RescaleIntercept
    if slope is None:
        raise ValueError("real_ct_test_images: a DICOM file has no rescale slope/intercept.")
    return pixels * float(slope) + float(intercept)


def real_ct_test_images(size: int = 64) -> torch.Tensor:
    r"""Real CT slices as a test batch ``(4, 1, size, size)``: the files of :data:`REAL_CT_FILES`
    (one head CT, the two frames of a brain CT, pydicom's small CT), read offline through
    ``pydicom.data.get_testdata_file``, converted to attenuation-like images
    (:func:`hounsfield_to_attenuation`), centre-cropped and resized to ``size``.

    For figures and a real-anatomy test of models trained on phantoms (4 images; no ground truth
    is needed to train with EI, but none of these serves for training here).

    :param int size: image side.
    :raises ImportError: without pydicom and pydicom-data (the ``[realdata]`` extra).
    """
    size = check_int("real_ct_test_images", "size", size, 8)
    (pydicom,) = _require("real_ct_test_images", "pydicom")
    _require("real_ct_test_images", "data_store")  # the pydicom-data package
    from pydicom.data import get_testdata_file

    images = []
    for name, _ in REAL_CT_FILES:
        path = get_testdata_file(name, download=False)
        if path is None:
            raise FileNotFoundError(f"real_ct_test_images: pydicom cannot find '{name}' offline.")
        hu = torch.from_numpy(_dicom_hu(pydicom.dcmread(path)))
        for frame in hu.reshape(-1, *hu.shape[-2:]):
            images.append(_resize(hounsfield_to_attenuation(frame)[None], size, normalise=False))
    return torch.stack(images)

"""Offline datasets (seeded phantoms) and the real-data entry points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepinv_deq.data import (
    SeededPhantomDataset,
    fastmri_slices,
    lidc_idri_slices,
    load_dataset,
    numpy_seed,
    phantom_splits,
)


@pytest.mark.parametrize("kind, channels", [("ct", 1), ("mri", 2)])
def test_phantoms_are_deterministic_images(kind, channels):
    a = SeededPhantomDataset(3, size=16, kind=kind, seed=5)
    b = SeededPhantomDataset(3, size=16, kind=kind, seed=5, cache=False)
    # access order must not matter
    xs_b = [b[i] for i in (2, 0, 1)]
    for i, xb in zip((2, 0, 1), xs_b, strict=True):
        assert a[i].shape == (channels, 16, 16)
        assert torch.equal(a[i], xb)
        assert a[i].min() >= 0 and a[i].max() <= 1
        assert a[i].abs().sum() > 0
    assert not torch.equal(a[0], a[1])
    if kind == "mri":
        assert torch.count_nonzero(a[0][1]) == 0  # imaginary part


def test_seeds_and_splits_differ():
    a = SeededPhantomDataset(2, size=16, seed=0)
    b = SeededPhantomDataset(2, size=16, seed=1)
    assert not torch.equal(a[0], b[0])
    train, test = phantom_splits("ct", 4, 4, size=16, seed=0)
    for i in range(4):
        for j in range(4):
            assert not torch.equal(train[i], test[j])


def test_global_numpy_state_untouched():
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    SeededPhantomDataset(2, size=16, kind="mri")[1]
    with numpy_seed(7):
        np.random.rand(10)
    assert np.allclose(np.random.rand(3), expected)


def test_phantoms_batch_in_dataloader():
    loader = torch.utils.data.DataLoader(SeededPhantomDataset(5, size=16), batch_size=2)
    shapes = [x.shape for x in loader]
    assert shapes == [(2, 1, 16, 16), (2, 1, 16, 16), (1, 1, 16, 16)]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"length": 0}, "length"),
        ({"size": 4}, "size"),
        ({"kind": "pet"}, "kind"),
        ({"seed": -1}, "seed"),
    ],
)
def test_phantom_options_validated(kwargs, name):
    opts = {"length": 2, "size": 16} | kwargs
    with pytest.raises(ValueError, match=name):
        SeededPhantomDataset(**opts)
    with pytest.raises(IndexError):
        SeededPhantomDataset(2, size=16)[2]


def _write_fastmri(path, n_slices=3, h=20, w=24, target=True):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        k = rng.standard_normal((n_slices, h, w)) + 1j * rng.standard_normal((n_slices, h, w))
        f.create_dataset("kspace", data=k.astype(np.complex64))
        if target:
            img = rng.random((n_slices, h, w)).astype(np.float32) * 5 + 2
            f.create_dataset("reconstruction_rss", data=img)
    return path


def test_fastmri_slices_reads_generated_files(tmp_path):
    _write_fastmri(tmp_path / "file1.h5")
    _write_fastmri(tmp_path / "file2.h5")
    ds = fastmri_slices(tmp_path, size=16, slice_index="all")
    assert len(ds) == 6
    x = ds[4]
    assert x.shape == (2, 16, 16)
    assert torch.isclose(x[0].min(), torch.tensor(0.0)) and torch.isclose(
        x[0].max(), torch.tensor(1.0)
    )
    assert torch.count_nonzero(x[1]) == 0
    middle = fastmri_slices(tmp_path, size=16)  # default: the middle slice of each volume
    assert len(middle) == 2 and torch.equal(middle[0], ds[1]) and torch.equal(middle[1], ds[4])
    train = load_dataset(str(tmp_path), "mri", n=1, size=16, split=0, counts=(1, 1, 0))
    test = load_dataset(str(tmp_path), "mri", n=1, size=16, split=1, counts=(1, 1, 0))
    assert torch.equal(train[0], ds[1]) and torch.equal(test[0], ds[4])


def test_real_data_splits_are_disjoint_by_volume(tmp_path):
    from deepinv_deq.data import groups_of, split_indices

    for name in ("a", "b", "c"):
        _write_fastmri(tmp_path / f"{name}.h5")  # 3 slices per volume
    ds = fastmri_slices(tmp_path, size=16, slice_index="all")
    groups = groups_of(ds)
    assert len(groups) == 9 and len(set(groups)) == 3  # one group per volume file
    parts = split_indices(groups, (2, 2, 2))
    vols = [{groups[i] for i in part} for part in parts]
    assert [len(p) for p in parts] == [2, 2, 2]
    assert not (vols[0] & vols[1]) and not (vols[0] & vols[2]) and not (vols[1] & vols[2])
    # load_dataset: the middle slice of each of the 3 volumes, one volume per split
    sets = [
        load_dataset(str(tmp_path), "mri", n=1, size=16, split=k, counts=(1, 1, 1))
        for k in (0, 1, 2)
    ]
    assert sorted(i for d in sets for i in d.indices) == [0, 1, 2]
    # more images than the folder holds, or more volumes than it has: clear errors
    with pytest.raises(ValueError, match="holds only 3"):
        load_dataset(str(tmp_path), "mri", n=2, size=16, split=0, counts=(2, 2, 0))
    with pytest.raises(ValueError, match="not enough patients/volumes"):
        split_indices(groups, (4, 4))
    assert split_indices(["p", "p", "q", "r"], (1, 2)) == [[0], [2, 3]]


def test_fastmri_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastmri_slices(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"\*\.h5"):
        fastmri_slices(tmp_path)
    _write_fastmri(tmp_path / "no_target.h5", target=False)
    with pytest.raises(ValueError, match="reconstruction"):
        fastmri_slices(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        fastmri_slices(bad)
    with pytest.raises(ValueError, match="local folder"):
        fastmri_slices(None)


def test_lidc_errors(tmp_path):
    # LIDC-IDRI slices are DICOM files listed in metadata.csv; writing DICOM needs pydicom, which is
    # not a dependency, so the folder checks and the missing-package message are what is tested.
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lidc_idri_slices(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="metadata.csv"):
        lidc_idri_slices(tmp_path)
    (tmp_path / "metadata.csv").write_text("Subject ID,Modality,File Location\n")
    try:
        import pandas  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            lidc_idri_slices(tmp_path)
    else:  # an empty listing is a malformed folder
        with pytest.raises(FileNotFoundError, match="no .dcm"):
            lidc_idri_slices(tmp_path)


# ------------------------------------------------------------------------------------------------
# code paths of the real-data loaders that need no file


def test_gapped_splits_leave_gaps_between_sets():
    from deepinv_deq.data import gapped_splits

    for blocks in (1, 2, 3):
        parts = gapped_splits(80, (20, 5, 9), gap=4, blocks=blocks)
        assert [len(p) for p in parts] == [20, 5, 9]
        for a in range(3):
            for b in range(a + 1, 3):
                assert min(abs(i - j) for i in parts[a] for j in parts[b]) > 4
    assert gapped_splits(12, (4, 2, 2), gap=1) == [[1, 2, 3, 4], [6, 7], [9, 10]]
    assert gapped_splits(6, (3, 0, 3), gap=0) == [[0, 1, 2], [], [3, 4, 5]]
    with pytest.raises(ValueError, match="need 35 slices"):
        gapped_splits(34, (20, 5, 6), gap=2)


def test_nonempty_slices_of_a_synthetic_volume():
    from deepinv_deq.data import nonempty_slices

    volume = torch.zeros(10, 16, 16)
    volume[3:7, 4:12, 4:12] = 1.0
    volume[8, 0, 0] = 1.0  # one bright pixel is not anatomy
    assert nonempty_slices(volume) == [3, 4, 5, 6]


def test_hounsfield_to_attenuation():
    from deepinv_deq.data import hounsfield_to_attenuation

    hu = torch.tensor([-3000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert torch.allclose(hounsfield_to_attenuation(hu), torch.tensor([0, 0, 0.5, 1, 1.0]))


def test_mni_needs_counts_and_mri():
    with pytest.raises(ValueError, match="MRI"):
        load_dataset("mni", "ct", 4, 16, counts=(4, 2, 2))
    with pytest.raises(ValueError, match="counts"):
        load_dataset("mni", "mri", 4, 16)


def test_deblur_uses_the_ct_phantoms():
    a = load_dataset("phantoms", "deblur", 2, 16)
    b = load_dataset("phantoms", "ct", 2, 16)
    assert torch.equal(a[1], b[1])

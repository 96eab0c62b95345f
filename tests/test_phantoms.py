"""Tests for medmoe.data.phantoms: determinism, shapes, lesions vs distractors vs reports, 3D labels."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medmoe.data.phantoms import (
    ANATOMY_CLASSES,
    CLASSES_3D,
    LESION_REGIONS,
    MODALITIES,
    SOURCE_DATASETS,
    PhantomDataset2D,
    PhantomVolumeDataset,
    ct_prompt,
    make_phantom_2d,
    make_phantom_3d,
    region_masks,
    rgb_to_grey,
)

# ---------------------------------------------------------------------------------------------- 2D


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_seed_same_phantom_different_seed_different(modality):
    a = make_phantom_2d(modality=modality, seed=11, size=64)
    b = make_phantom_2d(modality=modality, seed=11, size=64)
    c = make_phantom_2d(modality=modality, seed=12, size=64)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lesion, b.lesion)
    np.testing.assert_array_equal(a.anatomy, b.anatomy)
    np.testing.assert_array_equal(a.distractor, b.distractor)
    assert a.report == b.report
    assert a.distractor_regions == b.distractor_regions
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.lesion, c.lesion)


@pytest.mark.parametrize("size", [32, 128])
@pytest.mark.parametrize("modality", MODALITIES)
def test_shapes_dtypes_and_ranges(modality, size):
    ph = make_phantom_2d(modality=modality, seed=3, size=size)
    channels = 3 if modality == "derm" else 1
    assert ph.image.shape == (channels, size, size) and ph.image.dtype == np.float32
    assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
    assert ph.lesion.shape == ph.anatomy.shape == ph.distractor.shape == (size, size)
    assert ph.lesion.dtype == ph.anatomy.dtype == ph.distractor.dtype == np.uint8
    assert set(np.unique(ph.lesion)) <= {0, 1} and ph.lesion.sum() > 0
    assert set(np.unique(ph.distractor)) <= {0, 1}
    assert ph.anatomy.max() < len(ANATOMY_CLASSES[modality])
    assert ph.modality == modality and ph.anatomy_classes == ANATOMY_CLASSES[modality]
    assert ANATOMY_CLASSES[modality][0] == "background"


def test_every_anatomy_class_appears():
    for modality in MODALITIES:
        seen = set()
        for seed in range(10):
            seen |= set(np.unique(make_phantom_2d(modality=modality, seed=seed, size=96).anatomy).tolist())
        assert seen == set(range(len(ANATOMY_CLASSES[modality]))), modality


@pytest.mark.parametrize("modality", MODALITIES)
def test_regions_partition_and_follow_the_vocabulary(modality):
    ph = make_phantom_2d(modality=modality, seed=5)
    regions = region_masks(ph.anatomy, modality)
    assert tuple(regions) == LESION_REGIONS[modality]
    stack = np.stack(list(regions.values())).astype(int)
    assert stack.sum(0).max() == 1  # disjoint
    assert all(m.any() for m in regions.values())


@pytest.mark.parametrize("modality", MODALITIES)
def test_lesions_in_named_regions_report_names_exactly_them(modality):
    for seed in range(30):
        ph = make_phantom_2d(modality=modality, seed=seed, size=96)
        regions = region_masks(ph.anatomy, modality)
        assert 1 <= len(ph.lesion_regions) <= 3 and len(ph.distractor_regions) <= 2
        assert not set(ph.lesion_regions) & set(ph.distractor_regions)
        lesion_union = np.zeros_like(ph.lesion, bool)
        for name in ph.lesion_regions:
            assert (ph.lesion.astype(bool) & regions[name]).any(), (seed, name)
            lesion_union |= regions[name]
        assert not (ph.lesion.astype(bool) & ~lesion_union).any()  # every lesion pixel in a lesion region
        distractor_union = np.zeros_like(lesion_union)
        for name in ph.distractor_regions:
            assert (ph.distractor.astype(bool) & regions[name]).any(), (seed, name)
            distractor_union |= regions[name]
        assert not (ph.distractor.astype(bool) & ~distractor_union).any()
        # Distractors are not in the lesion mask, and the report names the lesion regions only.
        assert not (ph.lesion.astype(bool) & ph.distractor.astype(bool)).any()
        assert not (ph.lesion.astype(bool) & distractor_union).any()
        for name in LESION_REGIONS[modality]:
            assert (name in ph.report) == (name in ph.lesion_regions), (seed, name, ph.report)
        count = {1: "one", 2: "two", 3: "three"}[len(ph.lesion_regions)]
        assert f" {count} " in ph.report


def test_report_wording():
    reports = {m: [make_phantom_2d(modality=m, seed=s, size=64) for s in range(20)] for m in MODALITIES}
    patterns = {
        "cxr": r"(Unilateral|Bilateral) pulmonary infection, "
        r"(one infected area|(two|three) infected areas), .+\.",
        "ct": r"(Unilateral ground-glass opacity, one lesion|(Unilateral|Bilateral) ground-glass opacities, "
        r"(two|three) lesions), .+\.",
        "mri": r"(Unilateral|Bilateral) enhancing brain lesions?, (one lesion|(two|three) lesions), .+\.",
        "us": r"Hypoechoic lesions?, (one lesion|(two|three) lesions), .+\.",
        "derm": r"Pigmented lesions?, (one area|(two|three) areas), .+\.",
    }
    for modality, phantoms in reports.items():
        for ph in phantoms:
            assert re.fullmatch(patterns[modality], ph.report), ph.report
            if modality in ("cxr", "ct", "mri"):
                sides = {s for r in ph.lesion_regions for s in ("left", "right") if f" {s} " in f" {r} "}
                assert ph.report.startswith("Bilateral" if len(sides) == 2 else "Unilateral"), ph.report
            # Region names appear in the canonical order.
            order = [LESION_REGIONS[modality].index(r) for r in ph.lesion_regions]
            assert order == sorted(order)
    one = next(ph for ph in reports["cxr"] if len(ph.lesion_regions) == 1)
    side = "left" if "left" in one.lesion_regions[0] else "right"
    assert one.report == f"Unilateral pulmonary infection, one infected area, {one.lesion_regions[0]}."
    assert side in one.report


def test_cxr_left_lung_is_on_the_image_right():
    ph = make_phantom_2d(modality="cxr", seed=0)
    cols = np.arange(ph.anatomy.shape[1])
    left = ph.anatomy == ANATOMY_CLASSES["cxr"].index("left lung")
    right = ph.anatomy == ANATOMY_CLASSES["cxr"].index("right lung")
    assert cols[left.any(0)].mean() > ph.anatomy.shape[1] / 2 > cols[right.any(0)].mean()


def test_about_half_the_images_have_a_distractor_and_they_look_like_lesions():
    ds = PhantomDataset2D(n=250, modalities=MODALITIES, size=64, seed=4)
    with_distractor = np.mean([len(p.distractor_regions) > 0 for p in ds.phantoms])
    assert 0.35 <= with_distractor <= 0.65
    # Same appearance: lesion and distractor pixels have similar mean intensity per modality.
    for m in MODALITIES:
        les, dis = [], []
        for p in ds.phantoms:
            if p.modality != m or not p.distractor.any():
                continue
            grey = rgb_to_grey(p.image)[0] if p.image.shape[0] == 3 else p.image[0]
            les.append(grey[p.lesion > 0].mean())
            dis.append(grey[p.distractor > 0].mean())
        assert abs(np.mean(les) - np.mean(dis)) < 0.05, m


def test_modality_statistics_separate_the_modalities():
    ds = PhantomDataset2D(n=300, modalities=MODALITIES, size=64, seed=8, channels=1)
    feats = np.array([[it["image"].mean().item(), it["image"].std().item()] for it in ds])
    labels = np.asarray(ds.modality_labels)
    train = np.arange(len(ds)) < 150
    mu, sd = feats[train].mean(0), feats[train].std(0)
    z = (feats - mu) / sd
    centroids = np.stack([z[train & (labels == k)].mean(0) for k in range(len(MODALITIES))])
    pred = np.argmin(((z[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[~train]).mean() >= 0.95


def test_generation_is_fast():
    make_phantom_2d(modality="cxr", seed=0)  # warm caches
    start = time.perf_counter()
    PhantomDataset2D(n=200, modalities=MODALITIES, size=128, seed=1)
    assert time.perf_counter() - start < 10.0


def test_dataset_items_and_determinism():
    ds = PhantomDataset2D(n=7, modalities=("cxr", "us", "derm"), size=48, seed=2)
    item = ds[2]
    assert set(item) == {"image", "mask", "anatomy", "text", "modality", "modality_name", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 48, 48)  # derm, native
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, 48, 48)
    assert item["anatomy"].dtype == torch.int64 and item["anatomy"].shape == (48, 48)
    assert item["modality"] == MODALITIES.index("derm") and item["modality_name"] == "derm"
    assert item["index"] == 2 and item["text"] == ds.reports[2]
    assert [ds[i]["modality_name"] for i in range(7)] == ["cxr", "us", "derm"] * 2 + ["cxr"]
    assert ds.modality_labels == [MODALITIES.index(m) for m in ["cxr", "us", "derm"] * 2 + ["cxr"]]
    assert ds[0]["image"].shape == (1, 48, 48)
    again = PhantomDataset2D(n=9, modalities=("cxr", "us", "derm"), size=48, seed=2)
    for i in range(7):
        assert torch.equal(ds[i]["image"], again[i]["image"]) and ds[i]["text"] == again[i]["text"]
    other = PhantomDataset2D(n=7, modalities=("cxr", "us", "derm"), size=48, seed=3)
    assert not torch.equal(ds[0]["image"], other[0]["image"])
    with pytest.raises(IndexError):
        ds[7]


def test_dataset_channels_and_collate():
    ds3 = PhantomDataset2D(n=10, modalities=MODALITIES, size=32, channels=3)
    batch = next(iter(DataLoader(ds3, batch_size=10)))
    assert batch["image"].shape == (10, 3, 32, 32) and batch["mask"].shape == (10, 1, 32, 32)
    assert torch.equal(batch["image"][0, 0], batch["image"][0, 2])  # grey repeated
    ds1 = PhantomDataset2D(n=10, modalities=MODALITIES, size=32, channels=1)
    batch = next(iter(DataLoader(ds1, batch_size=10)))
    assert batch["image"].shape == (10, 1, 32, 32)
    derm = ds1.phantoms[4].image
    np.testing.assert_allclose(ds1[4]["image"].numpy(), rgb_to_grey(derm), atol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"modality must be one of .*cxr.*derm.*'xray'"):
        make_phantom_2d(modality="xray", seed=0)
    with pytest.raises(ValueError, match="size must be an int >= 32, got 16"):
        make_phantom_2d(modality="cxr", seed=0, size=16)
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        make_phantom_2d(modality="cxr", seed=-1)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        PhantomDataset2D(n=0)
    with pytest.raises(ValueError, match="modality must be one of"):
        PhantomDataset2D(n=2, modalities=("cxr", "pet"))
    with pytest.raises(ValueError, match="at least one"):
        PhantomDataset2D(n=2, modalities=())
    with pytest.raises(ValueError, match="channels must be None, 1 or 3, got 2"):
        PhantomDataset2D(n=2, channels=2)
    with pytest.raises(ValueError, match=r"anatomy must have shape \(H, W\)"):
        region_masks(np.zeros((1, 8, 8), np.uint8), "cxr")
    with pytest.raises(ValueError, match=r"shape \(3, H, W\)"):
        rgb_to_grey(np.zeros((1, 8, 8), np.float32))


# ---------------------------------------------------------------------------------------------- 3D


def test_phantom_3d_shapes_values_and_determinism():
    a = make_phantom_3d(seed=1)
    b = make_phantom_3d(seed=1)
    c = make_phantom_3d(seed=2)
    assert a.volume.shape == a.label.shape == (64, 64, 64)
    assert a.volume.dtype == np.float32 and a.label.dtype == np.uint8
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.volume, c.volume)
    assert -1100 < a.volume.min() and a.volume.max() < 600
    assert abs(a.volume[:, 0, 0].mean() + 1000) < 10  # air outside the body
    for name in ("liver", "spleen", "left kidney", "right kidney", "pancreas"):
        k = CLASSES_3D.index(name)
        assert (a.label == k).sum() > 100, name
    liver = a.volume[a.label == CLASSES_3D.index("liver")].mean()
    assert 80 < liver < 120
    small = make_phantom_3d(seed=0, size=40)
    assert small.volume.shape == (40, 40, 40)


def test_tumours_inside_the_liver_in_some_volumes():
    phantoms = [make_phantom_3d(seed=s, size=48) for s in range(12)]
    flags = [p.has_tumour for p in phantoms]
    assert any(flags) and not all(flags)
    tumour_id = CLASSES_3D.index("liver tumour")
    for p in phantoms:
        assert ((p.label == tumour_id).any()) == p.has_tumour
        if p.has_tumour:
            tumour = p.label == tumour_id
            assert p.volume[tumour].mean() < p.volume[p.label == CLASSES_3D.index("liver")].mean() - 30


@pytest.mark.parametrize("source", list(SOURCE_DATASETS))
def test_partial_labels(source):
    ds = PhantomVolumeDataset(n=4, source=source, size=40, seed=0)
    labelled = np.zeros(len(CLASSES_3D), bool)
    labelled[0] = True
    for c in SOURCE_DATASETS[source]:
        labelled[CLASSES_3D.index(c)] = True
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 40, 40, 40) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["label"].shape == (40, 40, 40) and item["label"].dtype == torch.int64
        assert item["labelled"].dtype == torch.bool and item["labelled"].tolist() == labelled.tolist()
        assert item["source"] == source and item["index"] == i
        present = set(torch.unique(item["label"]).tolist())
        assert all(labelled[k] for k in present), (source, present)
        for c in SOURCE_DATASETS[source]:
            if c != "liver tumour":
                assert CLASSES_3D.index(c) in present


def test_partial_labels_match_the_full_label():
    full = make_phantom_3d(seed=0, size=40)  # not the same patient as any source item; check the mapping
    ds = PhantomVolumeDataset(n=6, source="multi_organ", size=40, seed=5)
    tumour, liver = CLASSES_3D.index("liver tumour"), CLASSES_3D.index("liver")
    assert not any((ds[i]["label"] == tumour).any() for i in range(6))  # tumour folded into liver
    assert full.label.max() <= tumour
    kid = PhantomVolumeDataset(n=3, source="kidney", size=40, seed=5)
    assert not any((kid[i]["label"] == liver).any() for i in range(3))
    lt = PhantomVolumeDataset(n=6, source="liver_tumour", size=40, seed=5)
    assert any((lt[i]["label"] == tumour).any() for i in range(6))
    same = PhantomVolumeDataset(n=2, source="kidney", size=40, seed=5)
    assert torch.equal(same[1]["image"], kid[1]["image"])
    # Different sources hold different patients.
    assert not torch.equal(kid[0]["image"], ds[0]["image"])


def test_volume_windowing():
    ds = PhantomVolumeDataset(n=1, source="spleen", size=32, hu_window=(-175, 250))
    assert ds[0]["image"][0, :, 0, 0].max() == 0.0  # air clipped to the window's low end
    with pytest.raises(ValueError, match=r"hu_window must be \(low, high\) with low < high"):
        PhantomVolumeDataset(n=1, source="spleen", hu_window=(250, -175))


def test_volume_generation_is_fast():
    make_phantom_3d(seed=0)
    start = time.perf_counter()
    PhantomVolumeDataset(n=24, source="multi_organ", size=64)
    assert time.perf_counter() - start < 5.0


def test_3d_bad_arguments_and_prompt():
    with pytest.raises(ValueError, match=r"source must be one of \('liver_tumour', 'kidney'.*got 'lung'"):
        PhantomVolumeDataset(n=2, source="lung")
    with pytest.raises(ValueError, match="size must be an int >= 32, got 16"):
        make_phantom_3d(seed=0, size=16)
    with pytest.raises(ValueError, match="n must be a positive int"):
        PhantomVolumeDataset(n=0, source="kidney")
    assert ct_prompt("liver tumour") == "A computerized tomography of a liver tumour"
    with pytest.raises(ValueError, match="non-empty string"):
        ct_prompt("")


@pytest.mark.parametrize("modality", MODALITIES)
def test_fixed_lesion_regions_and_no_distractors(modality):
    from medmoe.data.phantoms import region_masks

    regions = LESION_REGIONS[modality][:2]
    ph = make_phantom_2d(modality=modality, seed=4, size=64, lesion_regions=regions, distractors=False)
    assert ph.lesion_regions == regions and ph.distractor_regions == () and ph.distractor.sum() == 0
    masks = region_masks(ph.anatomy, modality)
    for r in regions:  # a lesion pixel inside each named region, none outside them
        assert (ph.lesion.astype(bool) & masks[r]).any()
    assert not (ph.lesion.astype(bool) & ~(masks[regions[0]] | masks[regions[1]])).any()
    with pytest.raises(ValueError, match="lesion_regions"):
        make_phantom_2d(modality=modality, seed=4, size=64, lesion_regions=("nowhere",))


def test_default_phantom_unchanged_by_the_new_options():
    a = make_phantom_2d(modality="ct", seed=11, size=64)
    b = make_phantom_2d(modality="ct", seed=11, size=64, lesion_regions=None, distractors=True)
    assert np.array_equal(a.image, b.image) and a.report == b.report


@pytest.mark.parametrize("task,n_classes", [("region", None), ("count", 3)])
def test_finding_set_labels_prompts_and_images(task, n_classes):
    from medmoe.data.phantoms import PhantomFindingSet

    fs = PhantomFindingSet(modality="cxr", n_per_class=2, task=task, size=64, channels=3)
    n_classes = n_classes or len(LESION_REGIONS["cxr"])
    assert len(fs.classes) == len(fs.prompts) == n_classes and len(fs) == 2 * n_classes
    assert sorted(fs.labels) == sorted(list(range(n_classes)) * 2)
    item = fs[1]
    assert item["image"].shape == (3, 64, 64) and item["label"] == fs.labels[1]
    if task == "region":
        assert all(len(p) == 1 and fs.classes[c] in p[0] for c, p in enumerate(fs.prompts))
    else:  # every report with that many lesions: C(6, n)
        assert [len(p) for p in fs.prompts] == [6, 15, 20]
    again = PhantomFindingSet(modality="cxr", n_per_class=2, task=task, size=64, channels=3)
    assert torch.equal(again[3]["image"], fs[3]["image"])
    with pytest.raises(ValueError, match="task"):
        PhantomFindingSet(modality="cxr", n_per_class=1, task="size")

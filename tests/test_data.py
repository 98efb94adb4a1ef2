"""Loaders (on fixture copies of each release), clips, cache, synthetic generator and protocols."""
import os

import numpy as np
import pytest
from fixtures import releases as fx
from fixtures.optional import need

from meranet_fast.data import (
    AnnotationError,
    ClipCache,
    ClipDataset,
    FrameError,
    clip_indices,
    holdout_protocol,
    load_dataset,
    loso_protocol,
    make_synthetic,
    stratified_split,
    write_casme2_style,
)
from meranet_fast.data import frames as frames_mod
from meranet_fast.data.releases import (
    load_casme1,
    load_casme2,
    load_casme_sq,
    load_megc2019,
    load_samm,
    load_smic,
)
from meranet_fast.data.samples import frame_number
from meranet_fast.data.synthetic import render_frames


def _by_name(index):
    return {s.name: s for s in index.samples}


# ---------------------------------------------------------------- clips

def test_clip_indices_centre_and_edge_replication():
    assert clip_indices(10, 5, 4) == [3, 4, 5, 6]
    assert clip_indices(10, 0, 4) == [0, 0, 0, 1]        # replicate the first frame
    assert clip_indices(10, 9, 4) == [7, 8, 9, 9]        # replicate the last frame
    assert clip_indices(3, 1, 7) == [0, 0, 0, 1, 2, 2, 2]  # shorter than the clip: both ends
    assert clip_indices(1, 0, 3) == [0, 0, 0]
    with pytest.raises(ValueError, match="apex index 5"):
        clip_indices(5, 5, 3)


def test_frame_number_parsing():
    assert frame_number("img46.jpg") == 46
    assert frame_number("reg_img46.jpg") == 46
    assert frame_number("006_05562.jpg") == 5562
    assert frame_number("EP01_5-12.jpg") == 12
    assert frame_number("notes.txt.jpg") is None


# ---------------------------------------------------------------- releases

@pytest.mark.parametrize("cropped", [False, True])
def test_casme2_loader(tmp_path, cropped):
    info = fx.make_casme2(str(tmp_path), cropped=cropped)
    index = load_casme2(str(tmp_path))
    got = _by_name(index)
    assert len(got) == len(info["rows"])
    s = got["EP02_01f"]
    assert (s.subject, s.label, s.num_frames) == ("sub01", "happiness", 86 - 46 + 1)
    assert os.path.basename(s.frames[s.apex]) == f"{info['prefix']}59.jpg"
    # the '/' apex is replaced by the middle frame and reported
    gap = got["EP07_01"]
    assert os.path.basename(gap.frames[gap.apex]) == f"{info['prefix']}11.jpg"
    assert any("EP07_01" in line and "'/'" in line for line in index.issues)
    with pytest.warns(UserWarning, match="EP07_01"):
        index.warn()


def test_casme2_paper_subset_and_min_frames(tmp_path):
    fx.make_casme2(str(tmp_path))
    index, classes = load_dataset("casme2", str(tmp_path))
    assert classes == ("disgust", "happiness", "surprise")
    names = {s.name for s in index.samples}
    assert "EP15_01" not in names                      # repression is not in the paper's subset
    assert "EP09_05" in names                          # 20 frames >= 16
    short, _ = load_dataset("casme2", str(tmp_path), min_frames=21)
    assert "EP09_05" not in {s.name for s in short.samples}
    assert any("EP09_05" in line and "skipped" in line for line in short.issues)


def test_samm_loader_header_on_row_14(tmp_path):
    fx.make_samm(str(tmp_path))
    index = load_samm(str(tmp_path))
    got = _by_name(index)
    assert len(got) == 7
    s = got["006_1_2"]
    assert (s.subject, s.label, s.num_frames) == ("006", "happiness", 5632 - 5562 + 1)
    assert os.path.basename(s.frames[s.apex]) == "006_05588.jpg"
    assert os.path.basename(got["007_6_1"].frames[got["007_6_1"].apex]) == "007_00915.jpg"
    assert any("007_6_1" in line for line in index.issues)
    subset, classes = load_dataset("samm", str(tmp_path))
    assert sorted({s.label for s in subset.samples}) == sorted(classes) == ["anger", "happiness", "other"]


def test_casme1_loader_both_sections(tmp_path):
    info = fx.make_casme1(str(tmp_path))
    index = load_casme1(str(tmp_path))
    got = _by_name(index)
    assert len(got) == len(info["rows"])
    assert got["EP07_1"].subject == "sub08" and got["EP07_1"].label == "disgust"
    assert os.path.basename(got["EP07_1"].frames[got["EP07_1"].apex]) == "EP07_1-12.jpg"
    subset, _ = load_dataset("casme1", str(tmp_path), min_frames=0)
    assert {s.label for s in subset.samples} == {"disgust", "repression", "tense"}


def test_casme_sq_loader_micro_only(tmp_path):
    fx.make_casme_sq(str(tmp_path))
    index = load_casme_sq(str(tmp_path))
    got = _by_name(index)
    assert "happy1_3" not in got                        # macro-expression
    assert len(got) == 6
    s = got["anger1_1"]
    assert (s.subject, s.label) == ("s15", "anger")
    assert os.path.basename(s.frames[s.apex]) == "img572.jpg"
    assert os.path.basename(os.path.dirname(s.frames[0])) == "15_0401girlcrashing"
    # offset 0 (not coded): the sample runs to the last frame on disk, and this is reported
    assert got["anger1_2"].num_frames == 21
    assert any("anger1_2" in line and "offset" in line for line in index.issues)
    est = load_casme_sq(str(tmp_path), label_source="estimated")
    assert _by_name(est)["anger1_1"].label == "negative"


def test_smic_and_megc2019(tmp_path):
    fx.make_smic(str(tmp_path / "smic"))
    fx.make_casme2(str(tmp_path / "casme2"))
    fx.make_samm(str(tmp_path / "samm"))
    smic = _by_name(load_smic(str(tmp_path / "smic")))
    assert smic["s1_ne_01"].label == "negative" and smic["s1_ne_01"].apex == 6
    assert os.path.basename(smic["s1_ne_01"].frames[0]) == "reg_image106034.bmp"
    mixed = load_megc2019({"casme2": str(tmp_path / "casme2"), "samm": str(tmp_path / "samm"),
                           "smic": str(tmp_path / "smic")})
    labels = {(s.dataset, s.name): s.label for s in mixed.samples}
    assert labels[("casme2", "EP15_01")] == "negative"   # repression
    assert labels[("samm", "007_2_1")] == "negative"     # contempt
    assert labels[("samm", "006_1_2")] == "positive"
    assert ("samm", "007_6_1") not in labels             # "other" is not in the composite
    assert {s.subject for s in mixed.samples} >= {"casme2:sub01", "samm:006", "smic:s1"}
    index, classes = load_dataset("megc2019", f"casme2={tmp_path / 'casme2'},samm={tmp_path / 'samm'}")
    assert classes == ("negative", "positive", "surprise") and len(index.samples) == 13


def test_missing_and_corrupt_files_are_named(tmp_path):
    info = fx.make_casme2(str(tmp_path))
    missing = os.path.join(info["base"], "sub01", "EP03_02", "img12.jpg")
    os.remove(missing)
    with pytest.raises(FrameError, match="img12.jpg"):
        load_casme2(str(tmp_path))
    fx._frame(missing, 12)
    corrupt = os.path.join(info["base"], "sub01", "EP03_02", "img14.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"not a jpeg")
    index = load_casme2(str(tmp_path))
    ds = ClipDataset([_by_name(index)["EP03_02"]], ("disgust",), 4, (16, 16))
    with pytest.raises(FrameError, match="img14.jpg"):
        ds[0]
    sheet = os.path.join(str(tmp_path), "CASME2-coding-20140508.xlsx")
    with open(sheet, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(AnnotationError, match="CASME2-coding-20140508.xlsx"):
        load_casme2(str(tmp_path))
    os.remove(sheet)
    with pytest.raises(AnnotationError, match="CASME2-coding"):
        load_casme2(str(tmp_path))
    with pytest.raises(FrameError, match="sub09"):
        fx._sheet(sheet, [["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion"],
                          ["09", "EP01_01", 1, 2, 3, "happiness"]])
        load_casme2(str(tmp_path))


def test_missing_column_is_named(tmp_path):
    fx.make_samm(str(tmp_path))
    fx._sheet(os.path.join(str(tmp_path), "SAMM_Micro_FACS_Codes_v2.xlsx"),
              [["Subject", "Filename", "Onset Frame", "Offset Frame", "Estimated Emotion"], [6, "006_1_2", 1, 2, "x"]])
    with pytest.raises(AnnotationError, match="apex"):
        load_samm(str(tmp_path))


# ---------------------------------------------------------------- dataset, cache

def test_dataset_clip_is_centred_on_apex_and_cached(tmp_path, monkeypatch):
    fx.make_casme2(str(tmp_path / "rel"))
    index, classes = load_dataset("casme2", str(tmp_path / "rel"), min_frames=0)
    cache = ClipCache(str(tmp_path / "cache"))
    ds = ClipDataset(index.samples, classes, 5, (12, 10), cache=cache)
    i = [s.name for s in ds.samples].index("EP02_01f")
    clip = ds.raw_clip(i)
    assert clip.shape == (5, 12, 10, 3) and clip.dtype == np.uint8
    # frame grey levels encode the frame numbers: apex 59 sits in the middle
    assert [int(round(v)) for v in clip.mean(axis=(1, 2, 3))] == [57, 58, 59, 60, 61]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    monkeypatch.setattr(frames_mod, "load_frame", lambda *a: pytest.fail("decoded again despite the cache"))
    np.testing.assert_array_equal(ds.raw_clip(i), clip)
    x, y = ds[i]
    assert x.shape == (3, 5, 12, 10) and classes[y] == "happiness"
    assert abs(float(x.mean())) < 1e-5 and float(x[0].std()) == pytest.approx(1.0, abs=1e-3)


def test_flips_depend_on_seed_epoch_index_only():
    index = make_synthetic(num_subjects=2, per_class=4, num_frames=6)
    ds = ClipDataset(index.samples, ("disgust", "happiness", "surprise"), 3, (32, 32), train=True)
    a = [ds.flipped(i) for i in range(len(ds))]
    assert a == [ds.flipped(i) for i in range(len(ds))]
    assert 0 < sum(a) < len(a)
    ds.set_epoch(1)
    assert a != [ds.flipped(i) for i in range(len(ds))]
    ds.set_epoch(0)
    flipped = a.index(True)
    x, _ = ds[flipped]
    plain = ClipDataset(index.samples, ds.classes, 3, (32, 32))
    xp, _ = plain[flipped]
    assert x.flip(-1).allclose(xp, atol=1e-5)
    assert not any(plain.flipped(i) for i in range(len(plain)))


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_seeded():
    a, b = make_synthetic(num_subjects=2, per_class=2, seed=3), make_synthetic(num_subjects=2, per_class=2, seed=3)
    assert [(s.uid, s.apex) for s in a.samples] == [(s.uid, s.apex) for s in b.samples]
    fa = render_frames(a.samples[0].synthetic, [0, 5, 5, 9], (40, 40))
    np.testing.assert_array_equal(fa, render_frames(b.samples[0].synthetic, [0, 5, 5, 9], (40, 40)))
    np.testing.assert_array_equal(fa[1], fa[2])
    c = make_synthetic(num_subjects=2, per_class=2, seed=4)
    assert not np.array_equal(fa, render_frames(c.samples[0].synthetic, [0, 5, 5, 9], (40, 40)))


def test_synthetic_motion_is_local_and_class_specific():
    index = make_synthetic(num_subjects=1, per_class=1, num_frames=24, noise=0.0)
    for s in index.samples:
        c = s.synthetic
        onset, apex = render_frames(c, [c.onset, c.apex], (64, 64)).astype(float)
        diff = np.abs(apex - onset).mean(axis=2)
        rows = np.nonzero(diff.max(axis=1) > 40)[0]
        assert 0 < diff.mean() < 8, s.label                 # small, local change
        if s.label == "happiness":
            assert rows.min() > 32                           # mouth only: lower half of the image
        else:
            assert rows.min() < 32                           # brows move: upper half


def test_synthetic_roundtrip_through_casme2_loader(tmp_path):
    need("openpyxl")
    index = make_synthetic(num_subjects=2, per_class=1, num_frames=8)
    write_casme2_style(index, str(tmp_path), (32, 32))
    back = _by_name(load_casme2(str(tmp_path)))
    for s in index.samples:
        r = back[s.name]
        assert (r.subject, r.label, r.apex, r.num_frames) == (s.subject, s.label, s.apex, s.num_frames)
    s = index.samples[0]
    rendered = ClipDataset([s], ("disgust",), 4, (32, 32)).raw_clip(0).astype(float)
    decoded = ClipDataset([back[s.name]], ("disgust",), 4, (32, 32)).raw_clip(0).astype(float)
    assert np.abs(rendered - decoded).mean() < 10      # JPEG loss only


# ---------------------------------------------------------------- protocols

def test_stratified_split_proportions_and_seed():
    labels = ["a"] * 40 + ["b"] * 20 + ["c"] * 8
    kept, held = stratified_split(labels, 0.25, seed=1)
    assert sorted(kept + held) == list(range(68)) and not set(kept) & set(held)
    assert [sum(labels[i] == c for i in held) for c in "abc"] == [10, 5, 2]
    assert (kept, held) == stratified_split(labels, 0.25, seed=1)
    assert held != stratified_split(labels, 0.25, seed=2)[1]
    split = holdout_protocol(labels, 0.25, 0.2, seed=0)
    assert [sum(labels[i] == c for i in split.val) for c in "abc"] == [6, 3, 1]
    assert len(split.train) + len(split.val) + len(split.test) == 68


def test_loso_never_leaks_the_test_subject():
    rng = np.random.default_rng(0)
    subjects = [f"s{k}" for k in rng.integers(0, 6, size=60)]
    labels = [str(v) for v in rng.integers(0, 3, size=60)]
    folds = loso_protocol(labels, subjects, seed=0)
    assert [f.name for f in folds] == [f"loso-s{k}" for k in range(6)]
    tested = []
    for f in folds:
        test_subjects = {subjects[i] for i in f.test}
        assert len(test_subjects) == 1
        assert not test_subjects & {subjects[i] for i in f.train + f.val}
        assert sorted(f.train + f.val + f.test) == list(range(60))
        tested += f.test
    assert sorted(tested) == list(range(60))

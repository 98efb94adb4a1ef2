"""predict and saliency on a tiny trained MERANet-10 and a synthetic frame folder."""
import json

import numpy as np
import pytest
from fixtures.optional import need
from PIL import Image

from meranet_fast.cli import main
from meranet_fast.data import make_synthetic, write_casme2_style
from meranet_fast.explain.inference import load_trained, read_input
from meranet_fast.explain.saliency import attention_maps, grad_cam
from meranet_fast.nn import SpatioTemporalAttention3d
from meranet_fast.train.config import make_config
from meranet_fast.train.trainer import run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of MERANet-10 on 4×64×64 synthetic clips (64 pixels: layer4 keeps a 2×2 map for Grad-CAM)."""
    need("openpyxl")  # the frame folder is written as a CASME II-style release
    root = tmp_path_factory.mktemp("explain")
    cfg = make_config("paper", dataset="synthetic", synth_subjects=3, synth_per_class=2, synth_frames=6, clip_len=4,
                      size=64, model="meranet10", backend="eager", epochs=1, batch_size=4, workers=0, cache_dir="",
                      progress=False, out=str(root / "run"), device="cpu", warmup_steps=1)
    run_training(cfg)
    index = make_synthetic(num_subjects=1, per_class=1, num_frames=6, seed=7)
    write_casme2_style(index, str(root / "frames"), (40, 36))
    sample = index.samples[0]
    return {"ckpt": str(root / "run" / "best.pt"), "folder": str(root / "frames" / sample.subject / sample.name),
            "apex_number": sample.apex + 1}


def test_read_input_centres_on_apex(trained):
    clip = read_input(trained["folder"], 5, 32, apex=2)
    assert clip.clip.shape == (5, 32, 32, 3) and clip.apex_label == "img2.jpg"
    assert clip.apex_frame.shape == (40, 36, 3)
    assert read_input(trained["folder"], 5, 32).apex_label == "img3.jpg"   # middle of img1..img6
    with pytest.raises(FileNotFoundError, match="apex frame 99"):
        read_input(trained["folder"], 5, 32, apex=99)


def test_predict_writes_probabilities(trained, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["predict", trained["folder"], "--checkpoint", trained["ckpt"], "--json", str(out)]) == 0
    with open(out) as f:
        got = json.load(f)
    assert set(got["probabilities"]) == {"disgust", "happiness", "surprise"}
    assert sum(got["probabilities"].values()) == pytest.approx(1.0)
    assert got["predicted"] in capsys.readouterr().out


def test_predict_video_without_opencv_says_what_to_install(trained, tmp_path, capsys):
    try:
        import cv2  # noqa: F401
        pytest.skip("OpenCV is installed")
    except ImportError:
        pass
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 16)
    assert main(["predict", str(video), "--checkpoint", trained["ckpt"]]) == 1
    assert "opencv-python" in capsys.readouterr().err


def test_saliency_writes_pngs_and_maps(trained, tmp_path):
    need("matplotlib")
    out = tmp_path / "sal"
    assert main(["saliency", trained["folder"], "--checkpoint", trained["ckpt"], "--out", str(out),
                 "--apex", str(trained["apex_number"]), "--target", "surprise"]) == 0
    for name in ("gradcam.png", "attention.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    maps = np.load(out / "maps.npz")
    attn = [k for k in maps.files if k.startswith("attention/")]
    model, _ = load_trained(trained["ckpt"])
    assert len(attn) == sum(isinstance(m, SpatioTemporalAttention3d) for m in model.modules()) == 4
    for k in attn + ["gradcam"]:
        assert maps[k].shape == (4, 64, 64) and 0 <= maps[k].min() and maps[k].max() <= 1


def test_gradcam_and_attention_maps_direct(trained):
    model, meta = load_trained(trained["ckpt"])
    clip = read_input(trained["folder"], meta["clip_len"], meta["size"]).clip
    cams = [grad_cam(model, clip, target=t) for t in range(3)]
    for cam, probs, _ in cams:
        assert cam.shape == (4, 64, 64) and cam.min() >= 0 and probs.sum() == pytest.approx(1.0)
        assert cam.max() == pytest.approx(1.0) or cam.max() == 0.0
    assert [t for _, _, t in cams] == [0, 1, 2]
    assert grad_cam(model, clip)[2] == int(cams[0][1].argmax())            # default: the predicted class
    assert not all(np.allclose(cams[0][0], c) for c, _, _ in cams[1:])     # the map depends on the class
    names = [n for n, _ in attention_maps(model, clip)]
    assert names == [n for n, m in model.named_modules() if isinstance(m, SpatioTemporalAttention3d)]
    assert not model.training                                             # eval mode is kept

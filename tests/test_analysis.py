"""fvcore parameter / FLOP report: hand-computed counts, custom-op handles, skipped ops, the CLI."""
import json
import math

import pytest
import torch
from fixtures.optional import need

import meranet_fast.analysis.flops as flops
from meranet_fast.analysis import (
    FLOP_HANDLES,
    STAGES,
    channel_attention_flops,
    compare_models,
    flop_count_analysis,
    linear_flops,
    model_stats,
    ra_tail_flops,
    register_flop_handle,
    st_attention_flops,
)
from meranet_fast.cli import main as cli_main
from meranet_fast.models import resnet3d
from meranet_fast.nn import ChannelAttention3d, SpatioTemporalAttention3d
from meranet_fast.ops.reference import st_attention_reference

need("fvcore")

# Test-only stand-in for a fused op with the schema of meranet::st_attention_fwd, in its own namespace.
TEST_OP = "meranet_analysis_test::st_attention_fwd"


@torch.library.custom_op(TEST_OP, mutates_args=())
def _fused_st_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return st_attention_reference(x, weight, bias)[0]


class _FusedSTA(SpatioTemporalAttention3d):
    def forward(self, x):
        return torch.ops.meranet_analysis_test.st_attention_fwd(x, self.conv.weight, self.conv.bias)


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of FLOP_HANDLES, so tests can register or remove handles without leaking."""
    monkeypatch.setattr(flops, "FLOP_HANDLES", dict(FLOP_HANDLES))
    return flops.FLOP_HANDLES


def _sta_hand(n, c, thw, k):
    # mean over C + amax over C + conv (2 k^3 MACs a position) + sigmoid + multiply
    return n * c * thw + n * c * thw + n * thw * 2 * k ** 3 + n * thw + n * c * thw


def _ca_hand(n, c, thw, hidden):
    # mean + amax over THW, 2 paths x 2 linears, 2 relus, add, sigmoid, per-channel multiply
    return 2 * n * c * thw + 4 * n * c * hidden + 2 * n * hidden + n * c + n * c + n * c * thw


def _count(module, x):
    with torch.no_grad():
        analysis = flop_count_analysis(module.eval(), (x,))
        return analysis.total(), analysis.by_operator(), analysis.unsupported_ops()


@pytest.mark.parametrize("k", [3, 5, 7])
def test_st_attention_flops_match_hand_count(k):
    n, c, t, h, w = 2, 6, 3, 5, 4
    total, by_op, unsupported = _count(SpatioTemporalAttention3d(k), torch.randn(n, c, t, h, w))
    assert total == _sta_hand(n, c, t * h * w, k)
    assert by_op == st_attention_flops([n, c, t, h, w], [1, 2, k, k, k])
    assert by_op["conv"] == n * t * h * w * 2 * k ** 3
    assert not unsupported


@pytest.mark.parametrize("shared", ["conv", "mlp"])
def test_channel_attention_flops_match_hand_count(shared):
    n, c, t, h, w = 2, 32, 3, 4, 5
    total, by_op, unsupported = _count(ChannelAttention3d(c, 8, shared=shared), torch.randn(n, c, t, h, w))
    assert total == _ca_hand(n, c, t * h * w, c // 8)
    assert by_op["mean"] == by_op["amax"] == by_op["mul"] == n * c * t * h * w
    assert not unsupported


def test_fused_op_handle_counts_like_eager(private_registry):
    x = torch.randn(1, 8, 2, 6, 6)
    eager = _count(SpatioTemporalAttention3d(5), x)
    _, _, unsupported = _count(_FusedSTA(5), x)
    assert unsupported == {TEST_OP: 1}  # without a handle the op is skipped and reported
    register_flop_handle(TEST_OP, FLOP_HANDLES["meranet::st_attention_fwd"])
    fused = _count(_FusedSTA(5), x)
    assert fused == eager


def test_registry_has_handles_for_the_fused_ops_and_validates():
    assert {"meranet::st_attention_fwd", "meranet::st_attention_fwd_triton", "meranet::channel_attention",
            "meranet::ra_tail"} <= set(FLOP_HANDLES)
    with pytest.raises(ValueError, match="op_name"):
        register_flop_handle("st_attention_fwd", lambda i, o: 0)
    with pytest.raises(ValueError, match="callable"):
        register_flop_handle("meranet::x", 3)


def test_stem_flops_match_hand_count():
    stats = model_stats(resnet3d(10), (1, 3, 4, 32, 32))
    conv_out = 64 * 4 * 16 * 16  # stride (1, 2, 2)
    pool_out = 64 * 2 * 8 * 8  # MaxPool3d(3, 2, 1)
    conv = conv_out * 3 * 3 * 7 * 7  # multiply-adds
    assert stats.stage_flops["stem"] == conv + 2 * conv_out + conv_out + 27 * pool_out  # conv, BN, ReLU, pool
    assert stats.stage_flops["head"] == 512 + 512 * 3  # global average pool + linear
    assert stats.stage_params["head"] == 512 * 3 + 3


def test_compare_models_totals_and_attention_overhead():
    report = compare_models(10, (1, 3, 4, 32, 32))
    van, mer = report["vanilla"], report["meranet"]
    for stats in (van, mer):
        assert sum(stats["stage_params"].values()) == stats["params"]
        assert sum(stats["stage_flops"].values()) == stats["flops"]
        assert not stats["unsupported_ops"]
    # Stage outputs at 4x32x32: layer1 64x2x8x8, layer2 128x1x4x4, layer3 256x1x2x2, layer4 512x1x1x1.
    attention = {f"layer{i}": _sta_hand(1, c, thw, 5) + _ca_hand(1, c, thw, c // 16)
                 for i, (c, thw) in enumerate([(64, 128), (128, 16), (256, 4), (512, 1)], start=1)}
    for stage in STAGES:
        assert report["overhead"]["flops"]["stages"][stage]["abs"] == attention.get(stage, 0)
    total = report["overhead"]["flops"]["total"]
    assert total["abs"] == sum(attention.values()) == mer["flops"] - van["flops"]
    assert math.isclose(total["pct"], 100 * total["abs"] / van["flops"])
    assert report["overhead"]["params"]["total"]["abs"] == mer["params"] - van["params"] == 45_544
    json.dumps(report)  # serialisable


def test_skipped_operators_are_reported(private_registry):
    del private_registry["aten::amax"]
    stats = model_stats(resnet3d(10, attention=True, backend="eager"), (1, 3, 2, 32, 32))
    assert stats.unsupported_ops == {"aten::amax": 8}  # one in CA and one in STA, 4 blocks


def test_fused_model_traces_the_ra_tail_operator(private_registry):
    del private_registry["meranet::ra_tail"]
    stats = model_stats(resnet3d(10, attention=True), (1, 3, 2, 32, 32))  # backend="auto", the default
    assert stats.unsupported_ops == {"meranet::ra_tail": 4}  # one fused tail a block, nothing else


@pytest.mark.parametrize("depth", [10, 18])
def test_fused_and_eager_meranet_have_the_same_flops(depth):
    shape = (1, 3, 4, 32, 32)
    fused = model_stats(resnet3d(depth, attention=True, backend="auto"), shape)
    eager = model_stats(resnet3d(depth, attention=True, backend="eager"), shape)
    assert not fused.unsupported_ops and not eager.unsupported_ops
    assert fused.flops == eager.flops
    assert fused.stage_flops == eager.stage_flops and fused.by_operator == eager.by_operator


@pytest.mark.parametrize("bias", [True, False])
def test_fused_attention_ops_count_like_their_eager_code(bias):
    from meranet_fast.ops import channel_attention, ra_tail

    n, c, t, h, w = 2, 32, 3, 4, 5
    ca = ChannelAttention3d(c, 8, bias=bias)
    sta = SpatioTemporalAttention3d(5, backend="eager")
    y = torch.randn(n, c, t, h, w)
    assert channel_attention_flops(y.shape, c // 8) == _count(ca, y)[1]
    assert sum(channel_attention_flops(y.shape, c // 8).values()) == _ca_hand(n, c, t * h * w, c // 8)

    class FusedCA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ca = ca

        def forward(self, y):
            return channel_attention(y, *self.ca.shared_weights(), backend="cpp")

    class Tail(torch.nn.Module):
        def __init__(self, fused):
            super().__init__()
            self.fused, self.ca, self.sta = fused, ca, sta

        def forward(self, y, shortcut):
            if self.fused:
                return ra_tail(y, shortcut, *self.ca.shared_weights(), self.sta.conv.weight, self.sta.conv.bias,
                               backend="cpp")
            return torch.relu(self.sta(self.ca(y)) + shortcut)

    total, by_op, unsupported = _count(FusedCA(), y)
    assert not unsupported and by_op == channel_attention_flops(y.shape, c // 8)
    inputs = (y, torch.randn_like(y))
    with torch.no_grad():
        fused = flop_count_analysis(Tail(True), inputs)
        eager = flop_count_analysis(Tail(False), inputs)
        total, by_op = fused.total(), fused.by_operator()
        assert eager.total() and not fused.unsupported_ops() and not eager.unsupported_ops()
        assert by_op == ra_tail_flops(y.shape, c // 8, sta.conv.weight.shape)
        assert (total, by_op) == (eager.total(), eager.by_operator())
    assert total == _ca_hand(n, c, t * h * w, c // 8) + _sta_hand(n, c, t * h * w, 5) + 2 * n * c * t * h * w


def test_linear_flops_is_fvcores_count():
    assert linear_flops([4, 7, 16], [3, 16]) == 4 * 7 * 16 * 3
    with pytest.raises(ValueError, match="features"):
        linear_flops([4, 16], [3, 8])


def test_cli_depth18_prints_paper_comparison_and_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "flops.json"
    assert cli_main(["flops", "--depth", "18", "--input", "2x32x32", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "33,167,811" in text and "33,547,552" in text and "1.61" in text and "1.72" in text
    assert "meranet18 attention: auto" in text
    assert "skipped operators (counted as 0): none" in text
    report = json.loads(out.read_text())
    assert report["vanilla"]["params"] == 33_167_811
    assert report["meranet"]["params"] == 33_167_811 + 91_088
    assert report["input_shape"] == [1, 3, 2, 32, 32]
    assert report["meranet_backend"] == "auto"  # the default model is the fused one
    assert report["paper"]["meranet"] == {"params": 33_547_552, "gflops": 1.72}
    assert f"{report['vanilla']['flops'] / 1e9:.4f}" in text


def test_cli_other_depth_and_bad_input(capsys):
    assert cli_main(["flops", "--depth", "10", "--input", "1x32x32", "--shortcut", "A", "--num-classes", "5"]) == 0
    text = capsys.readouterr().out
    assert "resnet3d10" in text and "paper" not in text and "attention: auto" in text
    assert cli_main(["flops", "--depth", "10", "--input", "1x32x32", "--backend", "eager"]) == 0
    assert "meranet10 attention: eager" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["flops", "--input", "16x112"])
    assert "TxHxW" in capsys.readouterr().err

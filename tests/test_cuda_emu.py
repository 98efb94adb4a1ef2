"""The CUDA emulator itself (tools/cuda_emu, docs/design.md §6): its test kernels
(tools/cuda_emu/selftest_kernels.cu) check each rule, the CUDA semantics it must reproduce (shuffles with
widths, __syncwarp, votes, barriers, thread orders, poisoned shared memory) and the misuse it must turn
into a Python exception naming the kernel and block (divergent barriers, partial-warp shuffles, launch
limits, out-of-bounds global and shared memory).

Runs under ``make test-cuda-emu`` (tools/cuda_emu/run_tests.py sets MERANET_CUDA_EMU_SELFTEST).
"""
from __future__ import annotations

import os

import pytest
import torch

LIBRARY = os.environ.get("MERANET_CUDA_EMU_SELFTEST")
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")

pytestmark = pytest.mark.skipif(
    not LIBRARY, reason="the emulator's self-test runs under `make test-cuda-emu` (MERANET_CUDA_EMU_SELFTEST unset)")

if LIBRARY:
    torch.ops.load_library(LIBRARY)
    emu = torch.ops.cuda_emu_selftest_emu


def expected_shuffles(threads, width, delta):
    """What CUDA's __shfl*_sync return to lane t (value of lane j = 10 j), from the CUDA programming guide."""
    rows = [[], [], [], []]
    for t in range(threads):
        warp0, lane = t - t % 32, t % 32
        seg0 = lane - lane % width
        rows[0].append(warp0 + seg0 + delta % width)                                # __shfl_sync: srcLane mod width
        rows[1].append(t - delta if lane - seg0 >= delta else t)                    # up: own value below the segment
        rows[2].append(t + delta if lane - seg0 + delta < width else t)             # down: own value past the segment
        src = lane ^ delta
        rows[3].append(warp0 + src if src < seg0 + width else t)                    # xor: earlier segments only
    return torch.tensor(rows, dtype=torch.int32) * 10


@pytest.mark.parametrize("width,delta", [(32, 1), (32, 7), (16, 3), (16, 16), (8, 5), (4, 1), (2, 1)])
def test_shuffles_follow_cuda_semantics(width, delta):
    out = emu.shuffles(torch.full((4, 64), -5, dtype=torch.int32), width, delta)
    assert torch.equal(out, expected_shuffles(64, width, delta))


def test_syncwarp_halves_and_votes():
    out = emu.syncwarp(torch.zeros(35, dtype=torch.int32))
    assert out[:32].tolist() == [100 + (t ^ 1) for t in range(32)]
    assert out[32].item() == sum(1 << t for t in range(32) if t % 3 == 0)  # lanes 0, 3, ..., 30
    assert out[33].item() == 1 and out[34].item() == 0


@pytest.mark.parametrize("order", ["forward", "reverse", "random:3"])
def test_barrier_reduction_in_every_order(order, monkeypatch):
    monkeypatch.setenv("CUDA_EMU_ORDER", order)
    x = torch.arange(4 * 256, dtype=torch.float32)
    assert torch.equal(emu.block_sum(x, 256), x.view(4, 256).sum(1))


def test_thread_orders(monkeypatch):
    def order(name):
        monkeypatch.setenv("CUDA_EMU_ORDER", name)
        return emu.order(torch.zeros(2 * 96, dtype=torch.int32)).view(2, 96)

    forward, reverse, rand1, rand1_again, rand2 = (
        order("forward"), order("reverse"), order("random:1"), order("random:1"), order("random:2"))
    assert forward.tolist() == [list(range(96))] * 2
    assert reverse.tolist() == [list(range(95, -1, -1))] * 2
    assert torch.equal(rand1, rand1_again), "a seeded order must repeat"
    for r in (rand1, rand2):
        for phase in r:
            assert sorted(phase.tolist()) == list(range(96))
            warps = phase.view(3, 32)
            for w in warps:  # a warp runs as a unit, its lanes forward or reverse
                lanes = w.tolist()
                assert len({t // 32 for t in lanes}) == 1 and lanes in (sorted(lanes), sorted(lanes)[::-1])
    assert not torch.equal(rand1, rand2) and not torch.equal(rand1[0], forward[0])
    monkeypatch.setenv("CUDA_EMU_ORDER", "sideways")
    with pytest.raises(RuntimeError, match="CUDA_EMU_ORDER must be forward, reverse or random"):
        emu.order(torch.zeros(64, dtype=torch.int32))


def test_shared_memory_is_poisoned():
    assert emu.poison(torch.zeros(64, dtype=torch.int32)).tolist() == [-1] * 64  # 0xFFFFFFFF


MISUSE = [
    (0, r"kernel divergent_barrier_kernel .*divergent __syncthreads: block \(0,0,0\) thread"),
    (1, r"kernel partial_barrier_kernel .*__syncthreads not reached by every thread of the block \(32 exited"),
    (2, r"kernel shuffle_in_partial_warp_kernel .*__shfl_down_sync with mask 0xffffffff at block \(0,0,0\) "
        r"thread \(\d+,0,0\): lane 16 has exited"),
    (3, r"kernel lane_outside_mask_kernel .*__shfl_xor_sync with mask 0x0000ffff called by lane "
        r"(1[6-9]|2\d|3[01]), which is not in the mask"),
    (4, r"kernel read_outside_mask_kernel .*__shfl_down_sync at block \(0,0,0\) thread \(8,0,0\) reads lane 16, "
        r"which is not in the mask"),
    (5, r"kernel syncwarp_lane_at_barrier_kernel .*__syncwarp with mask 0xffffffff .*lane 5 .* waits at "
        r"__syncthreads"),
    (9, r"kernel bounded_kernel .*launched with 256 threads per block > __launch_bounds__\(128\)"),
    (10, r"launch of bounded_kernel: invalid block \(2048,1,1\)"),
    (11, r"launch of bounded_kernel: invalid grid \(1,70000,1\)"),
    (12, r"launch of dynamic_smem_off_by_one_kernel: dynamic shared memory 65536 B > 49152 B \(48 KiB without "
         r"cudaFuncSetAttribute opt-in\)"),
    (13, r"kernel big_static_smem_kernel .*static \+ dynamic shared memory 53248 B > the limit of 49152 B"),
]
MEMORY = [
    (6, r"kernel global_off_by_one_kernel<scalar_t = float, STEP = 1> "
        r"\(launched as global_off_by_one_kernel<float, 1>\): "
        r"invalid memory access \(AddressSanitizer\) in block \(7,0,0\) "
        r"thread \(127,0,0\):.*heap-buffer-overflow.*READ of size 4"),
    (7, r"kernel shared_off_by_one_kernel .*invalid memory access \(AddressSanitizer\) in block \(0,0,0\) "
        r"thread \(31,0,0\):.*use-after-poison.*READ of size 4"),
    (8, r"kernel dynamic_smem_off_by_one_kernel .*invalid memory access \(AddressSanitizer\) in block \(0,0,0\) "
        r"thread \(31,0,0\):.*use-after-poison.*WRITE of size 4"),
]


@pytest.mark.parametrize("case,message", MISUSE, ids=[str(c) for c, _ in MISUSE])
def test_misuse_raises_naming_kernel_and_block(case, message):
    with pytest.raises(RuntimeError, match="(?s)cuda_emu: " + message):
        emu.misuse(torch.zeros(1024), case)
    # the process stays usable after the error
    x = torch.arange(256, dtype=torch.float32)
    assert emu.block_sum(x, 256).item() == x.sum().item()


@pytest.mark.skipif(not ASAN, reason="memory checks need the AddressSanitizer build (LD_PRELOAD of libasan)")
@pytest.mark.parametrize("case,message", MEMORY, ids=[str(c) for c, _ in MEMORY])
def test_out_of_bounds_memory_raises_naming_kernel_and_block(case, message):
    with pytest.raises(RuntimeError, match="(?s)cuda_emu: " + message):
        emu.misuse(torch.zeros(1024), case)
    x = torch.arange(256, dtype=torch.float32)
    assert emu.block_sum(x, 256).item() == x.sum().item()

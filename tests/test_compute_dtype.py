"""dtype "auto": float32 checkpoints stay float32; half-precision ones compute in the CPU's fast dtype, widened to
float32 only where that fits in free memory (florence_vl/compute_dtype.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from florence_vl import compute_dtype
from florence_vl.compute_dtype import auto_compute_dtype
from florence_vl.florence2 import speed
from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint, save_florence2
from florence_vl.florence2.runner import Florence2

GIB = 2**30


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with or without AMX-BF16 and with `free` bytes of memory available."""
    monkeypatch.delenv("FLORENCE_VL_DTYPE", raising=False)

    def set_cpu(amx: bool, free: int | None = 16 * GIB):
        monkeypatch.setattr(speed, "cpu_has_amx_bf16", lambda: amx)
        monkeypatch.setattr(compute_dtype, "available_memory_bytes", lambda: free)
    return set_cpu


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_weights_widen_to_float32_without_amx(cpu, stored):
    cpu(amx=False)
    assert auto_compute_dtype(stored, 10**8) == torch.float32


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_weights_compute_in_bfloat16_with_amx(cpu, stored):
    cpu(amx=True)
    assert auto_compute_dtype(stored, 10**8) == torch.bfloat16


@pytest.mark.parametrize("amx", [False, True])
def test_float32_weights_never_lose_precision(cpu, amx):
    cpu(amx=amx)
    assert auto_compute_dtype(torch.float32, 10**8) == torch.float32


def test_no_widening_where_the_float32_copy_would_not_fit(cpu):
    # 8B parameters: 16 GB in bf16, 32 GB in fp32; 20 GB free + the 16 GB the bf16 weights hold = 36 GB < 2 x 32.
    cpu(amx=False, free=20 * 10**9)
    assert auto_compute_dtype(torch.bfloat16, 8 * 10**9) == torch.bfloat16
    assert auto_compute_dtype(torch.float16, 8 * 10**9) == torch.bfloat16   # fp16 itself is unusably slow on CPU
    assert auto_compute_dtype(torch.bfloat16, 3 * 10**9) == torch.float32   # 12 GB <= half of 20 + 6 GB


def test_unknown_free_memory_keeps_half_precision(cpu):
    cpu(amx=False, free=None)
    assert auto_compute_dtype(torch.bfloat16, 1000) == torch.bfloat16


def test_the_environment_override_still_wins(cpu, monkeypatch):
    cpu(amx=False)
    monkeypatch.setenv("FLORENCE_VL_DTYPE", "bf16")
    assert auto_compute_dtype(torch.float16, 1000) == torch.bfloat16
    assert auto_compute_dtype(torch.float32, 1000) == torch.float32


def test_available_memory_reads_meminfo():
    free = compute_dtype.available_memory_bytes()
    assert free is None or free > 64 * 2**20


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    bundle = load_florence2(make_tiny_checkpoint(root / "fp32"), dtype="bfloat16")
    return save_florence2(bundle, root / "bf16")


@pytest.mark.parametrize("amx, want", [(False, torch.float32), (True, torch.bfloat16)])
def test_florence2_auto_loads_a_bf16_checkpoint_in_the_fast_dtype(cpu, bf16_checkpoint, amx, want):
    cpu(amx=amx)
    florence = Florence2.from_pretrained(bf16_checkpoint)
    assert {p.dtype for p in florence.model.parameters()} == {want}
    stored = Florence2.from_pretrained(bf16_checkpoint, dtype=None).model  # None: as stored
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}
    # Widening is exact: the float32 weights are the bf16 ones.
    for (name, a), b in zip(florence.model.state_dict().items(), stored.state_dict().values()):
        assert torch.equal(a.float(), b.float()), name


def test_florence2_explicit_dtype_is_obeyed(cpu, bf16_checkpoint):
    cpu(amx=False)
    assert Florence2.from_pretrained(bf16_checkpoint, dtype="bfloat16").dtype == torch.bfloat16


def test_florence_vl_auto_widens_bf16_weights(cpu, tmp_path):
    from florence_vl.vl.chat import FlorenceVL
    from florence_vl.vl.tiny_checkpoint import make_tiny_vl_checkpoint

    path = make_tiny_vl_checkpoint(tmp_path / "vl")
    half = FlorenceVL.from_pretrained(path, dtype="bfloat16")
    half.save_pretrained(tmp_path / "vl-bf16")
    cpu(amx=False)
    assert {p.dtype for p in FlorenceVL.from_pretrained(tmp_path / "vl-bf16").model.parameters()} == {torch.float32}
    assert {p.dtype for p in FlorenceVL.from_pretrained(tmp_path / "vl-bf16", dtype=None).model.parameters()} \
        == {torch.bfloat16}
    cpu(amx=True)
    assert {p.dtype for p in FlorenceVL.from_pretrained(tmp_path / "vl-bf16").model.parameters()} == {torch.bfloat16}


def test_cli_loads_florence2_on_the_inference_fast_path(cpu, bf16_checkpoint):
    from florence_vl.cli import _load_florence2, build_parser
    from florence_vl.florence2.fast_davit import TransposedChannelAttention

    cpu(amx=False)
    args = build_parser().parse_args(["tasks", "x.png", "--task", "OD", "--model", str(bf16_checkpoint)])
    florence = _load_florence2(args)
    assert florence.dtype == torch.float32
    kinds = {type(m) for m in florence.model.model.vision_tower.modules()}
    assert TransposedChannelAttention in kinds

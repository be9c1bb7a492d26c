"""Stage 1 under torchrun with 2 CPU processes (gloo DDP through accelerate) logs the losses of one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("vl_ddp_child.py")


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_process_ddp_matches_one_process(tmp_path):
    from florence_vl.data.formats import write_split
    from florence_vl.florence2.checkpoint import make_tiny_checkpoint

    data = tmp_path / "world"
    write_split("train", 4, data, progress=False)
    florence2 = make_tiny_checkpoint(tmp_path / "f2", seed=5)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    single = tmp_path / "single"
    subprocess.run([sys.executable, str(CHILD), str(single), str(data), str(florence2)], env=env, check=True,
                   capture_output=True)
    ddp = tmp_path / "ddp"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", str(CHILD), str(ddp), str(data), str(florence2)],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = losses(single), losses(ddp)
    assert len(one) == len(two) == 2
    assert one == pytest.approx(two, rel=1e-4)

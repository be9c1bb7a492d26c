"""Copy the trained nano lineage from runs/ into models/nano/, the shipped default models.

    python scripts/ship_nano.py [--unicl runs/unicl-nano/model] [--florence2 runs/florence2-nano-names-24/model]
                                [--florence-vl runs/florence-vl-nano/stage2/model] [--parts florence_vl]

Every model is stored in bf16, half the bytes, which keeps the lineage under its ~60 MB budget, and loaded back
in fp32 (the dtype its numbers were measured in): UniCL-nano by its loader, Florence-2-nano because its
safetensors say "stored_dtype" and its config float32 (florence2/checkpoint.py: store_as), Florence-VL-nano
because its florence_vl.json says so. The shipped evaluation numbers are of the stored (bf16-rounded) weights.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from florence_vl.florence2.checkpoint import store_as

ROOT = Path(__file__).resolve().parent.parent


def copy_dir(src: Path, dst: Path) -> None:
    if not (src / "config.json").exists():
        raise SystemExit(f"{src} is not a trained model directory (no config.json)")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unicl", default="runs/unicl-nano/model")
    parser.add_argument("--florence2", default="runs/florence2-nano-names-24/model")
    parser.add_argument("--florence-vl", default="runs/florence-vl-nano/stage2/model")
    parser.add_argument("--parts", default="unicl,florence2",
                        help="comma-separated: unicl, florence2, florence_vl (default: unicl,florence2)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    nano = ROOT / "models" / "nano"
    nano.mkdir(parents=True, exist_ok=True)

    if "unicl" in parts:
        copy_dir(Path(args.unicl), nano / "unicl")
        store_as(nano / "unicl" / "model.safetensors", torch.bfloat16)  # keeps its "model_type": "unicl" metadata
    if "florence2" in parts:
        copy_dir(Path(args.florence2), nano / "florence2")
        store_as(nano / "florence2" / "model.safetensors", torch.bfloat16)
    if "florence_vl" in parts:
        from florence_vl.vl.chat import FlorenceVL

        src = Path(args.florence_vl)
        if not (src / "florence_vl.json").exists():
            raise SystemExit(f"{src} is not a trained Florence-VL model directory (no florence_vl.json)")
        tmp = nano / "florence-vl.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        FlorenceVL.from_pretrained(src).save_pretrained(tmp, storage_dtype="bfloat16")
        shutil.rmtree(nano / "florence-vl", ignore_errors=True)
        tmp.rename(nano / "florence-vl")
    total = sum(p.stat().st_size for p in nano.rglob("*") if p.is_file())
    print(f"shipped {nano}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

"""Write a random tiny Florence-2 checkpoint (native layout) to show the pipeline: OUT_DIR [--layout original]"""

import argparse

from florence_vl.florence2.checkpoint import make_tiny_checkpoint

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("out")
parser.add_argument("--layout", choices=["native", "original"], default="native")
args = parser.parse_args()
print(f"wrote random tiny checkpoint to {make_tiny_checkpoint(args.out, layout=args.layout)}")

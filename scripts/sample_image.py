"""Write a small sample scene (shapes and a text plate) for the demo: python scripts/sample_image.py OUT.png"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

out = Path(sys.argv[1] if len(sys.argv) > 1 else "sample.png")
out.parent.mkdir(parents=True, exist_ok=True)
image = Image.new("RGB", (320, 256), (235, 235, 225))
draw = ImageDraw.Draw(image)
draw.ellipse((30, 40, 110, 120), fill=(220, 30, 30))                       # red circle
draw.rectangle((180, 30, 270, 120), fill=(30, 60, 220))                    # blue square
draw.polygon([(90, 230), (150, 140), (210, 230)], fill=(40, 170, 60))      # green triangle
draw.rectangle((230, 190, 310, 225), fill=(250, 210, 40))                  # text plate
draw.text((240, 200), "HELLO", fill=(0, 0, 0))
image.save(out)
print(f"wrote {out}")

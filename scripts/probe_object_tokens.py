"""Linear probe: which shape and colour an object is, read from the DaViT token at its centre (docs/nano.md).

    python scripts/probe_object_tokens.py models/nano/florence2

3,000 objects of val scenes; a logistic regression (LBFGS) fit on 2,400, scored on 600; prints the accuracies
and the majority-class baselines. A cheap check of a vision tower before a long Florence-2 / Florence-VL run.
"""
import sys, torch
from florence_vl.data.world import generate_scene
from florence_vl.florence2.checkpoint import load_florence2
torch.manual_seed(0); torch.set_num_threads(2)
b = load_florence2(sys.argv[1], dtype=torch.float32); m = b.model.eval()
SHAPES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "diamond", "cross"]
COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "black", "white"]
feats, shape, color = [], [], []
seed = 0
while len(feats) < 3000:
    s = generate_scene(seed, "val"); seed += 1
    objs = [o for o in s.record.get("objects") or []]
    if not objs: continue
    px = b.image_processor([s.image], return_tensors="pt")["pixel_values"]
    W, H = s.image.size
    with torch.no_grad():
        tokens = m.model.vision_tower(px).last_hidden_state[0]
        if tokens.dim() == 3:  # (C, H, W) -> (HW, C)
            tokens = tokens.flatten(1).T
    side = int(tokens.shape[0] ** 0.5)
    for o in objs:
        x0, y0, x1, y1 = o["bbox"]
        cx, cy = min(side - 1, int((x0 + x1) / 2 / W * side)), min(side - 1, int((y0 + y1) / 2 / H * side))
        feats.append(tokens[cy * side + cx]); shape.append(SHAPES.index(o["class"] if "class" in o else o["shape"])); color.append(COLORS.index(o["color"]))
X = torch.stack(feats); X = (X - X.mean(0)) / (X.std(0) + 1e-6)
def probe(y):
    y = torch.tensor(y); tr, te = slice(0, 2400), slice(2400, None)
    w = torch.zeros(X.shape[1], 8, requires_grad=True); bias = torch.zeros(8, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=300)
    def closure():
        opt.zero_grad(); l = torch.nn.functional.cross_entropy(X[tr] @ w + bias, y[tr]) + 1e-3 * (w ** 2).sum(); l.backward(); return l
    opt.step(closure)
    acc = ((X[te] @ w + bias).argmax(1) == y[te]).float().mean().item()
    major = torch.bincount(y[tr], minlength=8).argmax(); return acc, (y[te] == major).float().mean().item()
print(sys.argv[1], "tokens", X.shape, "shape probe acc %.3f (majority %.3f)" % probe(shape), "colour probe acc %.3f (majority %.3f)" % probe(color))

"""Florence (arXiv 2111.11432) at nano size: the UniCL two-tower model, its loss, data, zero-shot evaluation.

model.py (UniCL: DaViT image tower + text tower), loss.py (unicl_loss), data.py (image-label and
image-description batches from the nano world), zeroshot.py (classification and retrieval),
checkpoint.py (save/load, DaViT hand-over to Florence-2), train.py (the recipe).
"""

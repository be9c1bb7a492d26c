"""Florence-VL: Florence-2 as the vision tower of a causal LLM (arXiv 2412.04424).

Data flows one way: image -> features.py (depth + breadth, one DaViT pass) -> fusion.py (DBFusion and the
mlp3x_gelu projector) -> model.py (spliced into the LLM at <image>) -> chat.py (templates, generation).
"""

"""What the evaluation measures: the paper's metrics (Ratio, Score, ASR, Frechet distance),
the protocol on one model (prompts, seeds, judges, CLIP score, FD), COCO for real models.
"""

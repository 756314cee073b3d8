"""The shapes world's data: the renderer and its vocabulary, hard renders, the prompt sets,
the train / held-out splits, the augmentation its judge and CLIP train with, and its params.
"""

"""Judges: whatever says whether an image shows a concept. One module per family (the
world's CNN, the non-learned geometric judge, the real-model judges), `registry` by name.
"""

"""The networks a run loads: Stable Diffusion (loading, prompt encoding, the guided DDIM
sampler), CLIP, the offline tokenizer, the world's tiny SD architecture and the
SD-v1.4-shaped test bed.
"""

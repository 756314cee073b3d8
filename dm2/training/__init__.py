"""How the shipped world's models are trained: the recipes (VAE, UNet, CLIP, judge) and
the seeded minibatch loop they share.
"""

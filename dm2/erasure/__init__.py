"""The erasure methods: Dark Miner (its loop and its three steps), the LoRA every trained
method writes, the baselines (ESD, UCE, learnable prompts, SLD), and `methods`, which
loads any of them behind one interface.
"""

"""Plumbing every stage shares: params.yaml parsing and its shared sections, the paths of
every output, safetensors / JSON I/O, provenance, sharding over processes, precision,
seeds, devices and image grids. Nothing here knows the world, a method or an attack.
"""

"""Pretrained models: the folder format on disk, the zoo's entries and their download (hub), the
registry of configs, checkpoint reading and the README's zoo table.
"""

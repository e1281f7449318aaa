"""Recurrent cells and their forms (fused, loop, minimal, xLSTM, Mamba-2, RG-LRU), the blocks around
them and the configurable stack every zoo network is built on.
"""

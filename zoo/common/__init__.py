"""What every layer shares, without torch: the task records, the text pipeline, the decoding loops, one
predict per task, the folders' typed formats and the allocator settings. The torch-free runtime and
service import from here alone (tests/test_layering.py checks it).
"""

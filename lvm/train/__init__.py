"""`lvm train`: config, the loop (setup / step / log / save), the step and evaluation (step.py), token
shards to packed batches (data.py, packing.py), checkpoints and resume (resume.py), FLOPs and MFU (flops.py)."""

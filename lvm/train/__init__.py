"""`lvm train`: the training config, the loop (setup / step / log / save), sequence packing and FLOP counting."""

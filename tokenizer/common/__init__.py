"""The project-wide base that every package uses: the input-error type, atomic file writes, RNG state and the
device/precision policy. It sits in `tokenizer`, the bottom of the import graph, so that data_builders and
lvm can use it without importing upward."""

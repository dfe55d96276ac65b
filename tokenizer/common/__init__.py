"""The project-wide base that every package uses: errors.py (the input-error type), files.py (atomic
writes), config.py (dataclass configs <-> YAML), hardware.py (the device/precision policy, CPU threads),
rng.py, checkpointing.py, schedule.py and tracking.py (what both trainers share), hub.py (hub ids -> the
Hugging Face cache). It sits in `tokenizer`,
the bottom of the import graph, so that data_builders and lvm use it without importing upward."""

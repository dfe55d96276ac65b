"""lvm_base: what every package of the project shares and none of them owns. errors.py (the input-error
type), files.py (atomic writes), config.py and validate.py (dataclass configs <-> YAML, value ranges),
hardware.py and cpu_probe.py (the device/precision policy, CPU threads), image_io.py (images in and out),
tar.py (the shard reader), checkpointing.py, schedule.py and tracking.py (what both trainers share),
hub.py (hub ids -> the Hugging Face cache).

It is the bottom of the import graph (lvm_base <- tokenizer <- data_builders <- lvm) and imports none of
the others, so the tokenizer package keeps only what turns images into codes."""

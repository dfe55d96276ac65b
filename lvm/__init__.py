"""lvm: the sequence model of Large Vision Models: configs, training, generation, prompting, evaluation, CLI."""

__version__ = "0.1.0"

"""lvm: the sequence model of Large Vision Models: configs, training, generation, prompting, evaluation, CLI."""

import logging
import math

__version__ = "0.1.0"


class _GridRopeFactorFilter(logging.Filter):
    """HF warns at every config load that a linear rope factor below 1 is unusual; grid rope's 1/pi
    (lvm.model.grid_rope_parameters) is meant. Installed here, so every way into lvm that loads a
    checkpoint (training, the generation engine, evaluation) stays quiet about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"factor field must be a float or int >= 1, got {1 / math.pi}" not in record.getMessage()


logging.getLogger("transformers.modeling_rope_utils").addFilter(_GridRopeFactorFilter())

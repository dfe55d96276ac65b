"""Train the transformer with next-token loss on token shards.

The config is a YAML file (see configs/train/); any key can be overridden on the command line, nested
keys with dots. The resolved config is saved next to the run's outputs.
"""

from lvm.config import add_config_arguments, config_from_args, config_to_yaml


def add_arguments(p):
    add_config_arguments(p, default="configs/train/tiny.yaml")


def run(args):
    from lvm.train_config import TrainConfig

    cfg = config_from_args(TrainConfig, args)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from tokenizer.errors import InputError

    raise InputError("'lvm train' is not available yet in this version (use --print-config to check a config)")

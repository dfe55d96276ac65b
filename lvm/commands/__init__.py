"""One module per leaf command of the `lvm` CLI (see lvm/cli.py); keep top-level imports light."""

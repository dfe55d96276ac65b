from lvm.cli import entry

entry()

import sys

from lvm.cli import main

sys.exit(main())

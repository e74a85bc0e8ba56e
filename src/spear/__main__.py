import sys

from spear.cli.app import main

sys.exit(main())

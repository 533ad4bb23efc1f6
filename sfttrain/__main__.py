import sys

from sfttrain.cli import main

sys.exit(main())

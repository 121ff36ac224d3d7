import sys

from clmem.cli import main

sys.exit(main())

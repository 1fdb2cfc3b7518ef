import sys

from medassist.cli import main

sys.exit(main())

import sys

from nstage.cli import main

sys.exit(main())

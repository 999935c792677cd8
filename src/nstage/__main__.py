import sys

from nstage.cli import entry

sys.exit(entry())

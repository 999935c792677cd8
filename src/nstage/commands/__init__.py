"""One module per ``nstage`` subcommand (see :mod:`nstage.cli`)."""

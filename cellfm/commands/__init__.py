"""One module per `cellfm` subcommand; see `cellfm.cli`."""

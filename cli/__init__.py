"""The `mmrecall` command line (`mmrecall.cli.main`) and what only it uses: the demo and local queries."""

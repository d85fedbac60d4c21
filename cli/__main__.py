"""`python -m mmrecall.cli ...`: the same as the `mmrecall` command."""

from mmrecall.cli.main import main

main()

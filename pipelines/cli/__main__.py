"""`python -m pipelines.cli`: the `appsim` console script without an installed entry point."""

from pipelines.cli import main

main()

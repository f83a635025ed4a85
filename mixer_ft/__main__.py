"""`python -m mixer_ft` is the `mixer-ft` command (also under `accelerate launch -m mixer_ft`)."""

from mixer_ft.cli import main

main()

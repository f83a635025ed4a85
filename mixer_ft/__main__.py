"""`python -m mixer_ft` is the `mixer-ft` command (also under `accelerate launch -m mixer_ft`)."""

from mixer_ft.cli import main

if __name__ == "__main__":  # not when a worker process imports the parent's main module
    main()

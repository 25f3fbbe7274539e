"""The `fractal` command-line client."""

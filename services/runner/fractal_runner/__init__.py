"""fractal-runner: executes jobs (local executor), reporting results to api."""

"""The end-to-end benchmark of the loader: `python -m bench.run` (see run.py)."""

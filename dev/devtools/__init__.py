"""Tooling that writes the project's documents (the AsyncAPI document); not in the image."""

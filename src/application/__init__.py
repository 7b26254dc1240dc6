"""Use cases of the loader and the ports they drive."""

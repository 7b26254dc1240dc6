"""Process entrypoints: settings, wiring, the Job's command line."""

"""One thin entry point per DVC stage (see dvc.yaml)."""

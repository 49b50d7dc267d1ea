"""Models shipped with the package (offline, no downloads)."""

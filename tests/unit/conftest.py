"""tests/unit: this directory is on sys.path, so tests import the shared `recordings`."""

"""tests/package: overlay built and installed as a packager ships it (test_wheel.py)."""

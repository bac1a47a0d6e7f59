"""A libcni test driver (driver.go) and the Python side that builds and runs it (build.py)."""

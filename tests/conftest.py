import os

pytest_plugins = ["overlay_fixtures"]

# No test installs onto this machine's own / (a test run once put files in /opt/cni/bin and
# /etc): overlay-install refuses a root of / while this is set, in tests and their children.
os.environ["OVERLAY_INSTALL_REFUSE_SLASH"] = "1"

pytest_plugins = ["overlay_fixtures"]

"""Put overlay in place on a host, the way a package would: `overlay-install`.

    overlay-install [--root DIR] [--prefix VENV] [--cni-only] [--conflist FILE]
                    [--plugin-python PATH] [--no-reload]

installer.py says what goes where; plugin.py the plugin's two forms (a launcher into the
virtualenv, or one standalone file for a node whose agent runs in a container); conflist.py
the conflist and its check; files.py how a file is written (only when it differs,
atomically). Beside them, the files shipped in the wheel as package data: the systemd unit
(overlay-agent.service), the example agent config (agent.toml), the default conflist
(overlay.conflist). The Vagrant lab provisions through install() (overlay.lab.vm),
so the lab runs the shipped unit.
"""

from overlay.install.files import Report
from overlay.install.installer import (
    CONFIG_PATH,
    PLUGIN_PATH,
    UNIT_PATH,
    InstallError,
    Options,
    install,
    install_with,
)

__all__ = ["CONFIG_PATH", "PLUGIN_PATH", "UNIT_PATH", "InstallError", "Options", "Report", "install",
           "install_with"]

"""overlay: an Open vSwitch / VXLAN overlay network driven by CNI.

Kept empty on purpose: the CNI plugin imports ``overlay.cni.v1`` and must not pay for anything
else at start-up.
"""

__version__ = "0.1.0"

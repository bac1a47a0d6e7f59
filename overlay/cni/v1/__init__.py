"""Generated gRPC stubs for proto/overlay/cni/v1/cni.proto (built by setup.py; never edited)."""

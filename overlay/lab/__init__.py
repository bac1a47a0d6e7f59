"""The labs: several overlay hosts built from network namespaces on one machine.

Each host is a namespace with its own ovsdb-server, ovs-vswitchd and overlay-agent, attached
to a shared underlay (a Linux bridge in its own namespace, where etcd runs too). Containers
are namespaces attached by running the real `ovs` CNI plugin as a runtime would. The same
per-host steps (overlay.lab.host) provision the Vagrant VMs.
"""

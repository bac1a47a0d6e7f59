"""The distributed gateway: one OVS internal port per network on each host that has
containers in it, the same IP and MAC everywhere, with egress masqueraded by the host kernel.

spec.py     what one network's gateway is (names, MAC, zone, table), pure
kernel.py   the Linux side: the port's address, routes, policy rule, sysctls (pyroute2)
nat.py      the iptables rules, each tagged with the network's comment so removal is exact
manager.py  which networks have a gateway here, and keeping all of the above in place
"""

"""What of OVSDB the agent's IDL follows: four tables, without the columns ovs-vswitchd keeps
rewriting on its own.

ovsdbapp's default follows every column of every table. ovs-vswitchd rewrites some columns on
its own: every interface's `statistics` every 5 s, and the link and protocol status columns
whenever they change (a new port's arrive in several updates). The agent reads none of them,
but the IDL parsed every update with the GIL held, on the thread every OVSDB transaction of the
agent waits for: with 10 ADDs at once it was the agent's largest use of the GIL (bench/
cni_latency.py's profile, docs/benchmarks.md). What the agent and ovsdbapp's commands read
(names, ports and interfaces, ofport and its request, error, external_ids, options, cur_cfg
and next_cfg, ...) stays followed: a table is followed whole, minus the columns below.
"""

from __future__ import annotations

from typing import Any

from ovsdbapp.backend.ovs_idl import idlutils

# The tables the agent and the ovsdbapp commands it runs (add_br, add_port, del_port,
# list_ports, db_get/db_set/db_list_rows/db_find_rows) read or write.
TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface")

# Columns ovs-vswitchd writes by itself, which the agent never reads.
UNFOLLOWED = {
    "Open_vSwitch": {"statistics"},
    "Bridge": {"status", "rstp_status"},
    "Port": {"statistics", "status", "rstp_statistics", "rstp_status", "bond_active_slave"},
    "Interface": {"statistics", "status", "link_speed", "link_resets", "link_state",
                  "admin_state", "duplex", "lacp_current", "bfd_status", "cfm_fault",
                  "cfm_fault_status", "cfm_remote_mpids", "cfm_remote_opstate", "cfm_health",
                  "cfm_flap_count"},
}


def schema_helper(endpoint: str) -> Any:
    """The IDL's schema helper for `endpoint` (fetched from the server), with TABLES
    registered minus UNFOLLOWED."""
    helper = idlutils.get_schema_helper(endpoint, "Open_vSwitch")
    tables = helper.schema_json["tables"]
    for table in TABLES:
        columns = [c for c in tables[table]["columns"] if c not in UNFOLLOWED.get(table, ())]
        helper.register_columns(table, columns)
    return helper

"""Rules as ovs-ofctl text: the one renderer, for the fallback path (ofctl.py) and for people
(`overlayctl trace`, doctor, logs, tests that read a rule).

Nothing parses this text back: the switch gets values encoded by ofencode.py, or this text
through ovs-ofctl, which reads it as it reads any rule.
"""

from __future__ import annotations

from overlay.ovs.flow import (
    IN_PORT,
    Action,
    Actions,
    Conjunction,
    Controller,
    Ct,
    Flow,
    GotoTable,
    Identity,
    Load,
    Match,
    Move,
    Op,
    Output,
    Resubmit,
    SetField,
)

# Match field names as ovs-ofctl writes them, where they differ from ours.
_KEYWORD = {"eth_src": "dl_src", "eth_dst": "dl_dst", "ipv4_src": "nw_src",
            "ipv4_dst": "nw_dst"}
# (eth_type, ip_proto) -> the protocol keyword that stands for both.
_PROTOCOL = {(0x0800, None): "ip", (0x0806, None): "arp", (0x86DD, None): "ipv6",
             (0x86DD, 58): "icmp6", (0x0800, 17): "udp", (0x86DD, 17): "udp6",
             (0x0800, 6): "tcp", (0x86DD, 6): "tcp6", (0x0800, 1): "icmp",
             (0x0800, 132): "sctp", (0x86DD, 132): "sctp6"}
_NXM = {"reg0": "NXM_NX_REG0[]", "reg1": "NXM_NX_REG1[]", "eth_src": "NXM_OF_ETH_SRC[]",
        "eth_dst": "NXM_OF_ETH_DST[]",
        "arp_sha": "NXM_NX_ARP_SHA[]", "arp_tha": "NXM_NX_ARP_THA[]",
        "arp_spa": "NXM_OF_ARP_SPA[]", "arp_tpa": "NXM_OF_ARP_TPA[]",
        "arp_op": "NXM_OF_ARP_OP[]"}


def match_text(m: Match) -> str:
    out: list[str] = []
    pairs = m.items()
    i = 0
    while i < len(pairs):
        name, value = pairs[i]
        if name == "eth_type":
            proto = pairs[i + 1][1] if i + 1 < len(pairs) and pairs[i + 1][0] == "ip_proto" \
                else None
            keyword = _PROTOCOL.get((int(value), None if proto is None else int(proto)))
            if keyword is not None:
                out.append(keyword)
                i += 1 if proto is None else 2
                continue
            out.append(f"dl_type={int(value):#06x}")
        elif name == "ip_proto":
            out.append(f"nw_proto={value}")
        else:
            out.append(f"{_KEYWORD.get(name, name)}={value}")
        i += 1
    return ",".join(out)


def identity_text(identity: Identity) -> str:
    """"table=T,priority=P[,match]", as ovs-ofctl reads (and, but for order, writes) it."""
    head = f"table={identity.table},priority={identity.priority}"
    rest = match_text(identity.match)
    return f"{head},{rest}" if rest else head


def action_text(action: Action) -> str:
    if isinstance(action, Output):
        return "IN_PORT" if action.port == IN_PORT else f"output:{action.port}"
    if isinstance(action, GotoTable):
        return f"goto_table:{action.table}"
    if isinstance(action, Resubmit):
        return f"resubmit(,{action.table})"
    if isinstance(action, Load):
        value = f"{action.value:#x}" if action.field == "arp_op" else str(action.value)
        return f"load:{value}->{_NXM[action.field]}"
    if isinstance(action, SetField):
        if action.field == "eth_src":
            return f"mod_dl_src:{action.value}"
        return f"set_field:{action.value}->{action.field}"
    if isinstance(action, Move):
        return f"move:{_NXM[action.src]}->{_NXM[action.dst]}"
    if isinstance(action, Ct):
        parts = (["commit"] if action.commit else []) + [f"zone={action.zone}"]
        if action.table is not None:
            parts.append(f"table={action.table}")
        return f"ct({','.join(parts)})"
    if isinstance(action, Conjunction):
        return f"conjunction({action.id},{action.clause}/{action.clauses})"
    if isinstance(action, Controller):
        return f"controller(meter_id={action.meter_id})"
    return ",".join(action_text(a) for a in action.expand())


def actions_text(actions: Actions) -> str:
    """The actions as OVS reads them; no action at all is "drop"."""
    return ",".join(action_text(a) for a in actions) or "drop"


def cookie_text(cookie: int) -> str:
    return f"{cookie:#018x}"


def flow_text(f: Flow, cookie: int) -> str:
    """A rule as `ovs-ofctl add-flow` and `replace-flows` read it."""
    return f"cookie={cookie_text(cookie)},{identity_text(f.identity)}," \
           f"actions={actions_text(f.actions)}"


def op_text(op: Op, cookie: int) -> str:
    """An operation as a line of `ovs-ofctl --bundle add-flows`."""
    if op.kind == "add":
        return f"add {flow_text(Flow(op.identity, op.actions), cookie)}"
    if op.kind == "modify_strict":
        return f"modify_strict {identity_text(op.identity)},actions={actions_text(op.actions)}"
    return f"delete_strict {identity_text(op.identity)}"

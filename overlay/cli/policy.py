"""overlayctl policy: write, delete, list and show network policies in etcd.

    overlayctl policy apply -f FILE [--network N]    JSON or YAML; one policy or several
    overlayctl policy delete NAME [--network N]
    overlayctl policy list [--network N] [--json]
    overlayctl policy show NAME [--network N] [--json]

apply reads the whole file and checks every policy in it before it writes any (a refused one
names its place in the file and the field: nothing is written, exit 1), then writes them in one
etcd transaction. A file holds a JSON object, a JSON list of them, or YAML documents (`---`
between them) each a policy or a list; `kind: List` with `items` is unwrapped as kubectl does.
--network is the network of policies that name none; one that names another is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from overlay.cli import policy_text
from overlay.policy.model import Policy, PolicyError, parse_policy, policy_to_dict
from overlay.store import records as r

if TYPE_CHECKING:
    from overlay.store.etcd import Store

T = TypeVar("T")
# overlay.store.policies (and with it the etcd client, ~40 ms) is imported by the functions
# that use it: `overlayctl status` builds this parser too and needs no etcd client.
MAX_FILE_BYTES = 4 * 1024 * 1024


class WithStore(Protocol):
    """overlayctl's way to use etcd: its TLS flags, its patience with an etcd that is down."""

    def __call__(self, use: Callable[[Store], T]) -> T: ...


class PolicyFileError(ValueError):
    """A file overlayctl cannot apply; the message says where and why."""


def add_parser(sub: Any, json_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("policy", help="network policies: apply, delete, list, show")
    verbs = p.add_subparsers(dest="verb", required=True)
    apply = verbs.add_parser("apply", help="check and write the policies of a file")
    apply.add_argument("-f", "--filename", required=True, help="JSON or YAML file ('-': stdin)")
    apply.add_argument("--network", help="network of the policies that name none")
    delete = verbs.add_parser("delete", help="delete a policy (its network's endpoints reopen)")
    delete.add_argument("name")
    delete.add_argument("--network", help="needed when several networks have a policy NAME")
    listing = verbs.add_parser("list", help="the policies in etcd")
    listing.add_argument("--network")
    json_flag(listing)
    show = verbs.add_parser("show", help="one policy, in words (or --json as stored)")
    show.add_argument("name")
    show.add_argument("--network", help="needed when several networks have a policy NAME")
    json_flag(show)


def documents(text: str, source: str) -> list[object]:
    """The policy documents of a file's text: JSON first, then YAML (a superset of it)."""
    try:
        docs: list[object] = [json.loads(text)]
    except ValueError:
        import yaml  # only for YAML files: overlayctl's other commands start without it

        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise PolicyFileError(f"{source}: neither JSON nor YAML ({exc})") from None
    out: list[object] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            doc = doc.get("items")
        if isinstance(doc, list):
            out.extend(doc)
        elif doc is not None:  # YAML's empty document (a trailing ---)
            out.append(doc)
    if not out:
        raise PolicyFileError(f"{source}: holds no policy")
    return out


def parse_file(text: str, source: str, network: str | None) -> list[Policy]:
    """Every policy of the file, or PolicyFileError naming the first refused one and its field."""
    out: list[Policy] = []
    seen: dict[tuple[str, str], int] = {}
    for number, doc in enumerate(documents(text, source), 1):
        try:
            policy = parse_policy(doc, network=network)
        except PolicyError as err:
            name = doc.get("name") if isinstance(doc, dict) else None
            named = f" ({name})" if isinstance(name, str) else ""
            raise PolicyFileError(f"{source}: policy {number}{named}: {err}") from None
        where = (policy.network, policy.name)
        if where in seen:
            raise PolicyFileError(f"{source}: policy {number}: {policy.network}/{policy.name} "
                                  f"is policy {seen[where]} too; a file names each once")
        seen[where] = number
        out.append(policy)
    return out


def _read(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_FILE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{path}: cannot read it ({exc})") from None
    if len(text) > MAX_FILE_BYTES:
        raise PolicyFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return text


def apply(store: Store, policies: list[Policy]) -> list[str]:
    """Write `policies`; one line per policy: created, configured or unchanged."""
    from overlay.store import policies as store_policies

    stored = {item.key: item.value for item in store.read_prefix(store_policies.POLICIES)[1]}
    networks = {item.key[len(r.NETWORKS):] for item in store.read_prefix(r.NETWORKS)[1]}
    changed, lines = [], []
    for p in policies:
        key = store_policies.policy_key(p.network, p.name)
        new = store_policies.encode_policy(p).encode()
        state = ("created" if key not in stored else
                 "unchanged" if stored[key] == new else "configured")
        if state != "unchanged":
            changed.append(p)
        note = "" if p.network in networks else (
            f" (network {p.network} has no record yet: it applies once the network exists)")
        lines.append(f"policy {p.network}/{p.name} {state}{note}")
    store_policies.put_policies(store, changed)
    return lines


def _keys_named(store: Store, name: str, network: str | None) -> list[str]:
    """The keys of policies called `name` (in `network`, or in any network)."""
    from overlay.store import policies as store_policies

    prefix = store_policies.policy_prefix(network) if network else store_policies.POLICIES
    return [item.key for item in store.read_prefix(prefix)[1]
            if item.key.rsplit("/", 1)[1] == name]


def _one(store: Store, name: str, network: str | None) -> str:
    from overlay.store import policies as store_policies

    keys = _keys_named(store, name, network)
    if not keys:
        where = f" in network {network}" if network else ""
        raise PolicyFileError(f"no policy {name}{where} (overlayctl policy list)")
    if len(keys) > 1:
        nets = ", ".join(k[len(store_policies.POLICIES):].split("/")[0] for k in keys)
        raise PolicyFileError(f"policy {name} exists in networks {nets}: add --network")
    return keys[0]


def run(args: argparse.Namespace, with_store: WithStore) -> int:
    """The `policy` command; exit code 0, or 1 with the reason on stderr and nothing written."""
    from overlay.store import policies as store_policies

    try:
        if args.verb == "apply":
            policies = parse_file(_read(args.filename), args.filename, args.network)
            print("\n".join(with_store(lambda store: apply(store, policies))))
        elif args.verb == "delete":
            def delete(store: Store) -> str:
                key = _one(store, args.name, args.network)
                network = key[len(store_policies.POLICIES):].split("/")[0]
                store_policies.delete_policy(store, network, args.name)
                return f"policy {network}/{args.name} deleted"
            print(with_store(delete))
        elif args.verb == "list":
            return _list(args, with_store)
        else:
            return _show(args, with_store)
    except (PolicyFileError, PolicyError) as err:
        print(f"overlayctl: {err}", file=sys.stderr)
        return 1
    return 0


def _list(args: argparse.Namespace, with_store: WithStore) -> int:
    from overlay.cli.overlayctl import table
    from overlay.store import policies as store_policies

    bad: list[str] = []
    found = with_store(lambda store: store_policies.list_policies(
        store, args.network, on_bad=lambda key, err: bad.append(f"{key}: {err}")))
    for line in bad:  # another writer's record: say so, but list the rest
        print(f"overlayctl: ignoring invalid policy record {line}", file=sys.stderr)
    if args.json:
        print(json.dumps([policy_to_dict(p) for p in found], indent=2))
    else:
        print(table([policy_text.row(p) for p in found],
                    ("network", "name", "priority", "selector", "ingress", "egress")))
    return 1 if bad else 0


def _show(args: argparse.Namespace, with_store: WithStore) -> int:
    from overlay.store import policies as store_policies

    def read(store: Store) -> tuple[str, bytes | None]:
        key = _one(store, args.name, args.network)
        network = key[len(store_policies.POLICIES):].split("/")[0]
        return key, store_policies.get_raw(store, network, args.name)
    key, value = with_store(read)
    if value is None:  # deleted between the two reads
        raise PolicyFileError(f"no policy {args.name}")
    try:
        policy = store_policies.decode_policy(key, value)
    except PolicyError as err:
        raise PolicyFileError(f"{key} is not a valid policy record: {err}") from None
    print(json.dumps(policy_to_dict(policy), indent=2) if args.json
          else policy_text.describe(policy))
    return 0

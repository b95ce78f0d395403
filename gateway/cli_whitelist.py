"""``pilegate tokens ...`` and ``pilegate whitelist ...``: tokens, named
lists and piles' local lists, through a running gateway's ops API
(docs/whitelists.md). Exit status 1 when the API refuses or is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .cli_firmware import DEFAULT_API_URL, ApiClient, CliError, _client


def _run(
    group: str, fn: Callable[[argparse.Namespace, ApiClient], Any]
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            result = fn(args, _client(args))
        except CliError as exc:
            print(f"pilegate {group}: {exc}", file=sys.stderr)
            return 1
        if result is not None:
            if isinstance(result, str):
                sys.stdout.write(result)
            else:
                print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0

    return command


# --- tokens ------------------------------------------------------------------------------
def tokens_add(args: argparse.Namespace, api: ApiClient) -> Any:
    body: dict[str, Any] = {
        "type": args.type,
        "status": args.status,
        "pile_ids": args.pile or [],
        "operators": args.operator or [],
    }
    if args.expiry:
        body["expiry"] = args.expiry
    if args.parent:
        body["parent_id_tag"] = args.parent
    result = api.json("PUT", f"/api/tokens/{quote(args.id_tag, safe='')}", body=body)
    for w in result.get("warnings", []):
        print(f"warning: {w['message']}", file=sys.stderr)
    return result


def tokens_block(args: argparse.Namespace, api: ApiClient) -> Any:
    return api.json("POST", f"/api/tokens/{quote(args.id_tag, safe='')}/block")


def tokens_delete(args: argparse.Namespace, api: ApiClient) -> Any:
    api.call("DELETE", f"/api/tokens/{quote(args.id_tag, safe='')}")
    return {"deleted": args.id_tag}


def tokens_import(args: argparse.Namespace, api: ApiClient) -> Any:
    data = Path(args.file).read_bytes()
    return api.json("POST", "/api/tokens/import", data=data, headers={"Content-Type": "text/csv"})


def tokens_export(args: argparse.Namespace, api: ApiClient) -> Any:
    text = api.call("GET", "/api/tokens.csv").decode("utf-8")
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        return {"written": args.output}
    return text


# --- lists -------------------------------------------------------------------------------
def wl_create(args: argparse.Namespace, api: ApiClient) -> Any:
    return api.json(
        "POST", "/api/whitelists", body={"name": args.name, "description": args.description}
    )


def wl_delete(args: argparse.Namespace, api: ApiClient) -> Any:
    api.call("DELETE", f"/api/whitelists/{quote(args.name, safe='')}")
    return {"deleted": args.name}


def wl_show(args: argparse.Namespace, api: ApiClient) -> Any:
    if args.name:
        return api.json("GET", f"/api/whitelists/{quote(args.name, safe='')}")
    return api.json("GET", "/api/whitelists")


def _tokens(add: bool) -> Callable[[argparse.Namespace, ApiClient], Any]:
    def command(args: argparse.Namespace, api: ApiClient) -> Any:
        body = {"add": args.tokens, "remove": []} if add else {"add": [], "remove": args.tokens}
        return api.json("PUT", f"/api/whitelists/{quote(args.name, safe='')}/tokens", body=body)

    return command


def wl_assign(args: argparse.Namespace, api: ApiClient) -> Any:
    assignment = {
        "pile_ids": args.pile or [],
        "operators": args.operator or [],
        "region_prefixes": args.region or [],
        "kinds": args.kind or [],
    }
    return api.json(
        "PUT", f"/api/whitelists/{quote(args.name, safe='')}/assignments", body=[assignment]
    )


def wl_status(args: argparse.Namespace, api: ApiClient) -> Any:
    if args.pile:
        return api.json("GET", f"/api/piles/{args.pile}/whitelist")
    suffix = f"?status={args.only}" if args.only else ""
    return api.json("GET", f"/api/whitelist/status{suffix}")


def wl_resync(args: argparse.Namespace, api: ApiClient) -> Any:
    return api.json("POST", f"/api/piles/{args.pile}/whitelist/resync")


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-url",
        default=os.environ.get("PILEGATE_API_URL", DEFAULT_API_URL),
        help="ops API base URL (default $PILEGATE_API_URL or %(default)s)",
    )
    common.add_argument("--api-token", default=None, help="bearer token ($PILEGATE_API_TOKEN)")

    tk = sub.add_parser("tokens", help="authorization tokens (cards, VINs, passwords)")
    tks = tk.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    add = tks.add_parser("add", parents=[common], help="create or replace a token")
    add.add_argument("id_tag")
    add.add_argument("--type", required=True, choices=["card", "vin", "password"])
    add.add_argument("--status", default="accepted", choices=["accepted", "blocked", "expired"])
    add.add_argument("--expiry", help="RFC 3339 with offset, e.g. 2027-01-01T00:00:00+08:00")
    add.add_argument("--parent", help="parent idTag (group)")
    add.add_argument("--pile", action="append", help="bind to this pile (repeatable)")
    add.add_argument("--operator", action="append", help="bind to this operator code")
    add.set_defaults(func=_run("tokens", tokens_add))
    for name, fn, help_ in (
        ("block", tokens_block, "block a token"),
        ("delete", tokens_delete, "delete a token"),
    ):
        p = tks.add_parser(name, parents=[common], help=help_)
        p.add_argument("id_tag")
        p.set_defaults(func=_run("tokens", fn))
    imp = tks.add_parser("import", parents=[common], help="import a CSV file (all or nothing)")
    imp.add_argument("file")
    imp.set_defaults(func=_run("tokens", tokens_import))
    exp = tks.add_parser("export", parents=[common], help="export every token as CSV")
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")
    exp.set_defaults(func=_run("tokens", tokens_export))

    wl = sub.add_parser("whitelist", help="named whitelists and piles' local lists")
    wls = wl.add_subparsers(dest="whitelist_command", required=True, metavar="ACTION")
    c = wls.add_parser("create", parents=[common], help="create a named list")
    c.add_argument("name")
    c.add_argument("--description")
    c.set_defaults(func=_run("whitelist", wl_create))
    d = wls.add_parser("delete", parents=[common], help="delete a list")
    d.add_argument("name")
    d.set_defaults(func=_run("whitelist", wl_delete))
    sh = wls.add_parser("show", parents=[common], help="show one list, or all")
    sh.add_argument("name", nargs="?")
    sh.set_defaults(func=_run("whitelist", wl_show))
    for name, flag in (("add", True), ("remove", False)):
        p = wls.add_parser(name, parents=[common], help=f"{name} tokens of a list")
        p.add_argument("name")
        p.add_argument("tokens", nargs="+")
        p.set_defaults(func=_run("whitelist", _tokens(flag)))
    a = wls.add_parser("assign", parents=[common], help="set the piles a list applies to")
    a.add_argument("name")
    a.add_argument("--pile", action="append", help="explicit pile ID (repeatable)")
    a.add_argument("--operator", action="append", help="operator code filter")
    a.add_argument("--region", action="append", help="region code prefix filter")
    a.add_argument("--kind", action="append", choices=["AC", "DC"], help="kind filter")
    a.set_defaults(func=_run("whitelist", wl_assign))
    st = wls.add_parser(
        "status",
        parents=[common],
        help="a pile's sync status and difference, or every pile's status",
    )
    st.add_argument("pile", nargs="?")
    st.add_argument("--only", choices=["in_sync", "pending", "failed"])
    st.set_defaults(func=_run("whitelist", wl_status))
    rs = wls.add_parser("resync", parents=[common], help="force a full resync of a pile")
    rs.add_argument("pile")
    rs.set_defaults(func=_run("whitelist", wl_resync))

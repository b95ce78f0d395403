"""``pilegate firmware ...``: images and upgrade tasks, through the ops API.

``register(sub)`` is called by ``gateway.cli`` to add the command group.
Every command talks HTTP to a running gateway (``--api-url``, token from
``--api-token`` or ``PILEGATE_API_TOKEN``), prints a readable result and
exits non-zero when the API refuses or cannot be reached. Standard library
only (urllib), so the CLI needs nothing the gateway does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:8080"
_STATES = (
    "pending",
    "waiting",
    "sent",
    "downloading",
    "downloaded",
    "installing",
    "installed",
    "verified",
    "failed",
    "skipped",
    "cancelled",
    "retry_wait",
)


class CliError(Exception):
    """Printed to stderr; the command exits with status 1."""


class ApiClient:
    def __init__(self, url: str, token: str | None, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.url + path, data=data, headers=all_headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                content: bytes = response.read()
                return content
        except urllib.error.HTTPError as exc:
            raise CliError(_error_message(exc.code, exc.read())) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the ops API at {self.url}: {reason}") from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return json.loads(self.call(method, path, **kwargs))


def _error_message(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {raw.decode('utf-8', 'replace')[:300]}"
    message = f"{error.get('message')} (HTTP {status}, {error.get('code')})"
    if error.get("field"):
        message += f"\n  field: {error['field']}"
    if error.get("piles"):
        message += f"\n  piles: {', '.join(map(str, error['piles']))}"
    return message


# --- output --------------------------------------------------------------------------
def _print_task(task: dict[str, Any], *, piles: bool = True) -> None:
    print(f"task {task['id']}: {task['status_text']}")
    print(
        f"  target {task['target_version']} (image {task['image_id']}), "
        f"driven by {task.get('node_id') or '-'}, created {task['created_at']}"
    )
    print(f"  {task['summary']}")
    for wave in task.get("waves", []):
        name = "canary" if wave["index"] == 0 else f"wave {wave['index']}"
        verdict = "passed" if wave["passed"] else "FAILED"
        print(
            f"  {name}: {verdict}, {wave['members']} piles, {wave['verified']} verified, "
            f"{wave['failed']} failed ({wave['failure_rate']:.0%})"
        )
    if not piles or not task.get("piles"):
        return
    header = ("pile", "state", "wave", "tries", "last status", "elapsed", "reason")
    rows = [
        (
            r["pile_id"],
            r["state"],
            "" if r["wave"] is None else str(r["wave"]),
            str(r["attempts"]),
            r["last_status"] or "",
            "" if r["elapsed_seconds"] is None else f"{r['elapsed_seconds']:.1f}s",
            r["reason"] or "",
        )
        for r in task["piles"]
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    print()
    for line in (header, *rows):
        cells = [str(x).ljust(w) for x, w in zip(line[:-1], widths, strict=False)]
        print("  ".join([*cells, line[-1]]))


def _print_image(image: dict[str, Any]) -> None:
    where = "external" if image["external"] else "stored"
    print(
        f"image {image['id']}: {image['version']} for {image['model']}, {image['size']} bytes, "
        f"sha256 {image['sha256']} ({where})"
    )
    print(f"  chargers download it from {image['url']}")


# --- commands ------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> ApiClient:
    token = args.api_token if args.api_token is not None else os.environ.get("PILEGATE_API_TOKEN")
    return ApiClient(args.api_url, token)


def _run(
    fn: Callable[[argparse.Namespace, ApiClient], None],
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            fn(args, _client(args))
        except CliError as exc:
            print(f"pilegate firmware: {exc}", file=sys.stderr)
            return 1
        return 0

    return command


def cmd_upload(args: argparse.Namespace, api: ApiClient) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    query = urllib.parse.urlencode(
        {"version": args.version, "model": args.model, "filename": args.filename or path.name}
    )
    with path.open("rb") as data:
        image = json.loads(
            api.call(
                "POST",
                f"/api/firmware/images?{query}",
                data=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(path.stat().st_size),
                },
            )
        )
    if args.json:
        print(json.dumps(image, indent=2))
    else:
        _print_image(image)


def cmd_images(args: argparse.Namespace, api: ApiClient) -> None:
    images = api.json("GET", "/api/firmware/images")
    if args.json:
        print(json.dumps(images, indent=2))
    for image in [] if args.json else images:
        _print_image(image)


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [v for v in value.replace(",", " ").split() if v]
    return out


def task_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /api/firmware/tasks body from ``--spec FILE`` and the flags
    (flags win)."""
    body: dict[str, Any] = {}
    if args.spec:
        try:
            body = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"--spec {args.spec}: {exc}") from None
    if args.image is not None:
        body["image_id"] = args.image
    if args.target_version is not None:
        body["target_version"] = args.target_version
    piles = _split(args.piles)
    if args.piles_file:
        piles += _split(Path(args.piles_file).read_text(encoding="utf-8").splitlines())
    selector = {
        key: value
        for key, value in (
            ("operator", args.operator),
            ("region_prefix", args.region_prefix),
            ("kind", args.kind),
            ("model", args.model),
            ("current_versions", args.current_version),
        )
        if value is not None
    }
    if piles and selector:
        raise CliError("give --piles/--piles-file or selector flags, not both")
    if piles:
        body["targets"] = piles
    elif selector:
        body["targets"] = selector
    if "targets" not in body:
        raise CliError("which piles? give --piles, --piles-file or a selector (--operator ...)")

    def section(name: str, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            body[name] = {**body.get(name, {}), **values}

    window = None
    if args.window:
        start, sep, end = args.window.partition("-")
        if not sep:
            raise CliError("--window is START-END in local time, e.g. 22:00-04:00")
        window = {"start": start, "end": end, "utc_offset_minutes": args.utc_offset_minutes}
    section("schedule", {"start_at": args.start_at, "window": window})
    waves = None
    if args.waves:
        try:
            waves = [int(w) for w in _split([args.waves])]
        except ValueError:
            raise CliError(f"--waves is a list of sizes, e.g. 5,20: {args.waves!r}") from None
    section(
        "rollout",
        {
            "canary": args.canary,
            "waves": waves,
            "wave_percent": args.wave_percent,
            "max_concurrent": args.max_concurrent,
            "failure_threshold": args.failure_threshold,
        },
    )
    section(
        "retries",
        {
            "max_attempts": args.attempts,
            "backoff_seconds": args.backoff,
            "backoff_factor": args.backoff_factor,
            "backoff_max_seconds": args.backoff_max,
        },
    )
    section(
        "timeouts",
        {
            "download_seconds": args.download_timeout,
            "install_seconds": args.install_timeout,
            "reboot_seconds": args.reboot_timeout,
        },
    )
    if args.allow_downgrade:
        body["allow_downgrade"] = True
    return body


def cmd_create_task(args: argparse.Namespace, api: ApiClient) -> None:
    task = api.json("POST", "/api/firmware/tasks", body=task_body(args))
    if args.json:
        print(json.dumps(task, indent=2))
        return
    plural = "" if task["total"] == 1 else "s"
    print(
        f"task {task['id']} created: {task['total']} pile{plural}, target {task['target_version']}"
    )
    for why, piles in task.get("excluded", {}).items():
        print(f"  excluded ({why.replace('_', ' ')}): {len(piles)} piles: {', '.join(piles[:10])}")
    _print_task(task, piles=False)


def cmd_tasks(args: argparse.Namespace, api: ApiClient) -> None:
    query = f"?state={urllib.parse.quote(args.state)}" if args.state else ""
    tasks = api.json("GET", f"/api/firmware/tasks{query}")
    if args.json:
        print(json.dumps(tasks, indent=2))
        return
    for task in tasks:
        print(
            f"task {task['id']}: {task['status_text']}; {task['target_version']}; {task['summary']}"
        )


def cmd_status(args: argparse.Namespace, api: ApiClient) -> None:
    query = f"?state={args.state}" if args.state else ""
    if args.csv:
        sys.stdout.write(
            api.call("GET", f"/api/firmware/tasks/{args.id}/piles.csv{query}").decode()
        )
        return
    task = api.json("GET", f"/api/firmware/tasks/{args.id}{query}")
    if args.json:
        print(json.dumps(task, indent=2))
    else:
        _print_task(task)


def _control(operation: str) -> Callable[[argparse.Namespace, ApiClient], None]:
    def command(args: argparse.Namespace, api: ApiClient) -> None:
        task = api.json("POST", f"/api/firmware/tasks/{args.id}/{operation}")
        if args.json:
            print(json.dumps(task, indent=2))
        else:
            _print_task(task, piles=False)

    return command


# --- parser ----------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add the ``firmware`` command group to the ``pilegate`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-url",
        default=os.environ.get("PILEGATE_API_URL", DEFAULT_API_URL),
        help="ops API base URL (default $PILEGATE_API_URL or %(default)s)",
    )
    common.add_argument(
        "--api-token", default=None, help="bearer token (default: $PILEGATE_API_TOKEN)"
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    fw = sub.add_parser(
        "firmware",
        help="firmware images and upgrade tasks",
        description="Upload firmware images and run upgrade tasks through a running gateway's "
        "ops API (docs/firmware.md). Exit status 1 when the API refuses or is unreachable.",
    )
    fwsub = fw.add_subparsers(dest="firmware_command", required=True, metavar="ACTION")

    up = fwsub.add_parser("upload", parents=[common], help="upload an image (SHA-256 computed)")
    up.add_argument("file", metavar="FILE")
    up.add_argument("--version", required=True, help="e.g. DLH_XD32E_210521003")
    up.add_argument("--model", required=True, help="charger model, e.g. XD32E")
    up.add_argument("--filename", help="name in the download URL (default: the file's)")
    up.set_defaults(func=_run(cmd_upload))

    images = fwsub.add_parser("images", parents=[common], help="list images")
    images.set_defaults(func=_run(cmd_images))

    ct = fwsub.add_parser(
        "create-task",
        parents=[common],
        help="create an upgrade task",
        description="Create a firmware task. Targets: --piles (in rollout order) or selector "
        "flags (every one must match). Unset values take the defaults in docs/firmware.md.",
    )
    what = ct.add_argument_group("what")
    what.add_argument("--image", type=int, help="image id")
    what.add_argument("--target-version", help="or the version (its newest image)")
    what.add_argument("--spec", metavar="FILE", help="a JSON task body; flags override it")
    which = ct.add_argument_group("which piles")
    which.add_argument("--piles", action="append", help="pile IDs, comma separated")
    which.add_argument("--piles-file", metavar="FILE", help="pile IDs, one per line")
    which.add_argument("--operator", help="4-digit operator code")
    which.add_argument("--region-prefix", help="leading digits of the region code")
    which.add_argument("--kind", choices=["AC", "DC"])
    which.add_argument("--model", help="charger model")
    which.add_argument(
        "--current-version", action="append", help="piles running this version (repeatable)"
    )
    when = ct.add_argument_group("when")
    when.add_argument("--start-at", help="RFC 3339 time with offset (default: now)")
    when.add_argument(
        "--window", help="daily maintenance window, local START-END, e.g. 22:00-04:00"
    )
    when.add_argument("--utc-offset-minutes", type=int, default=480, help="local time offset")
    how = ct.add_argument_group("how fast")
    how.add_argument("--canary", type=int, help="canary piles (default 1)")
    how.add_argument("--waves", help="wave sizes, e.g. 5,20 (the last repeats)")
    how.add_argument("--wave-percent", type=float, help="or each wave this %% of the piles")
    how.add_argument("--max-concurrent", type=int, help="piles in flight at most (default 10)")
    how.add_argument("--failure-threshold", type=float, help="stop above this rate (default 0.2)")
    retry = ct.add_argument_group("retries and timeouts (seconds)")
    retry.add_argument("--attempts", type=int, help="UpdateFirmware attempts per pile (default 3)")
    retry.add_argument("--backoff", type=float, help="wait after a failed attempt (default 300)")
    retry.add_argument("--backoff-factor", type=float, help="backoff growth (default 2)")
    retry.add_argument("--backoff-max", type=float, help="longest backoff (default 3600)")
    retry.add_argument("--download-timeout", type=float, help="default 1800")
    retry.add_argument("--install-timeout", type=float, help="default 1200")
    retry.add_argument("--reboot-timeout", type=float, help="default 600")
    ct.add_argument(
        "--allow-downgrade", action="store_true", help="also flash piles running a newer build"
    )
    ct.set_defaults(func=_run(cmd_create_task))

    tasks = fwsub.add_parser("tasks", parents=[common], help="list tasks, newest first")
    tasks.add_argument("--state", help="only tasks in this state (running, stopped...)")
    tasks.set_defaults(func=_run(cmd_tasks))

    st = fwsub.add_parser("status", parents=[common], help="a task: counts, waves, every pile")
    st.add_argument("id", type=int, metavar="ID")
    st.add_argument("--csv", action="store_true", help="the per-pile CSV export")
    st.add_argument("--state", choices=_STATES, help="only piles in this state")
    st.set_defaults(func=_run(cmd_status))

    for operation, text in (
        ("pause", "dispatch nothing new (piles in flight are followed)"),
        ("resume", "resume a paused task"),
        ("cancel", "cancel every pile not yet sent"),
    ):
        p = fwsub.add_parser(operation, parents=[common], help=text)
        p.add_argument("id", type=int, metavar="ID")
        p.set_defaults(func=_run(_control(operation)))

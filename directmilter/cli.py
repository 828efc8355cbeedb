"""The ``directmilter`` command: the agent's two operations on a file, and configuration checks.

Every failure ends in one line on stderr and a sysexits.h exit code (see :mod:`directmilter.replies`); stdout gets
the processed message only when processing succeeded, so a pipeline can never pick up half a result or plaintext
after a refusal.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from directmilter import __version__, spool
from directmilter.agent import Agent, MessageEnvelope
from directmilter.agent.envelope import Outcome
from directmilter.config import Config, describe, load_config
from directmilter.errors import ConfigError, DirectMilterError, NoTrustedRecipients
from directmilter.log import configure
from directmilter.replies import EX_CONFIG, EX_OK, reason_for, reply_for

DEFAULT_CONFIG = "/etc/directmilter/directmilter.conf"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        configure(args.log_level, json=args.log_format == "json")
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        return _fail(exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="directmilter", description="Direct Project Security/Trust Agent")
    parser.add_argument("--version", action="version", version=f"directmilter {__version__}")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    parser.add_argument("--log-format", default="kv", choices=("kv", "json"),
                        help="key=value lines (default) or JSON lines, both to stderr (journald under systemd)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, handler, text in (
        ("outgoing", _outgoing, "sign and encrypt a hosted sender's message (stdin -> stdout)"),
        ("incoming", _incoming, "decrypt and verify a message for hosted recipients (stdin -> stdout)"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        _config_option(command)
        command.add_argument("--sender", required=True, help="envelope sender (MAIL FROM); '' for <>")
        command.add_argument("--rcpt", required=True, action="append", help="envelope recipient (RCPT TO)")
        command.add_argument("--at", type=_timestamp, help="validate certificates as of this ISO 8601 time")
        command.set_defaults(handler=handler)

    serve = commands.add_parser("run", help="run the milter in the foreground on the configured socket")
    _config_option(serve)
    serve.add_argument("--socket", help="override [milter] socket, e.g. inet:8891@127.0.0.1 or unix:/run/x.sock")
    serve.set_defaults(handler=_run)

    lookup = commands.add_parser("lookup", help="show what discovery finds for an address and what qualifies")
    _config_option(lookup)
    lookup.add_argument("address", help="the recipient address, e.g. bob@direct.b.test")
    lookup.add_argument("--sender", help="judge trust with this hosted sender's outgoing anchors")
    lookup.add_argument("--at", type=_timestamp, help="validate certificates as of this ISO 8601 time")
    lookup.set_defaults(handler=_lookup)

    check = commands.add_parser("check-config", help="load the configuration and describe it")
    _config_option(check)
    check.set_defaults(handler=_check_config)
    _admin_commands(commands)
    return parser


def _admin_commands(commands: Any) -> None:
    """keys, anchors, bundles, tracked: the operator's tasks on the folders the configuration names."""
    from directmilter import admin

    def add(group: Any, name: str, text: str, call: Callable[..., Any], *arguments: tuple[str, str],
            direction: bool = False, **options: dict[str, Any]) -> None:
        command = group.add_parser(name, help=text, description=text)
        _config_option(command)
        for argument, argument_help in arguments:
            command.add_argument(argument, help=argument_help)
        for option, settings in options.items():
            command.add_argument(f"--{option.replace('_', '-')}", **settings)
        if direction:
            command.add_argument("--direction", choices=("incoming", "outgoing", "both"), default="both",
                                 help="which anchor set (default: both)")
        command.set_defaults(handler=functools.partial(_admin, call))

    owner = ("owner", "a hosted domain or address")
    keys = commands.add_parser("keys", help="import and list our private keys").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add(keys, "import", "check a PKCS#12 file and store it 0600 in the owner's keys folder", admin.import_pkcs12,
        owner, ("source", "the PKCS#12 file"), password_file={"type": Path, "help": "file holding its password"})
    add(keys, "list", "every key and certificate we sign and decrypt with", admin.list_keys)
    anchors = commands.add_parser("anchors", help="add, list and remove trust anchors").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add(anchors, "add", "add the certificates in a file as anchors", admin.add_anchors, owner,
        ("source", "PEM, DER or PKCS#7 file"), direction=True)
    add(anchors, "remove", "remove an anchor by SHA-256 fingerprint (8+ hex digits)", admin.remove_anchor, owner,
        ("prefix", "the start of the SHA-256 fingerprint"), direction=True)
    add(anchors, "list", "the anchors and bundles in force for a domain or address", admin.list_anchors, owner)
    bundles = commands.add_parser("bundles", help="add and remove trust bundle URLs").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add(bundles, "add", "anchor a domain or address to a trust bundle URL", admin.add_bundle, owner,
        ("url", "https://... .p7b"), direction=True)
    add(bundles, "remove", "drop a trust bundle URL", admin.remove_bundle, owner, ("url", "the URL"),
        direction=True)
    add(commands, "tracked", "outgoing messages still waiting for their MDN", admin.list_awaiting,
        limit={"type": int, "default": 100, "help": "show at most this many (default 100)"})


def _admin(call: Callable[..., Any], args: argparse.Namespace) -> int:
    config = load_config(args.config)
    named = {k: v for k, v in vars(args).items() if k not in ("config", "handler", "command", "action",
                                                             "log_level", "log_format") and v is not None}
    if "source" in named:
        named["source"] = Path(named["source"])
    if "direction" in named:
        named["which"] = named.pop("direction")
    for line in call(config, **named):
        print(line)
    if args.command in ("keys", "anchors", "bundles") and args.action not in ("list",):
        print("directmilter: run 'systemctl reload directmilter' (or send SIGUSR1) to apply", file=sys.stderr)
    return EX_OK


def _config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file ({DEFAULT_CONFIG})")


def _timestamp(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _outgoing(args: argparse.Namespace) -> int:
    return _process(args, lambda agent, envelope: agent.outgoing(envelope, moment=args.at))


def _incoming(args: argparse.Namespace) -> int:
    return _process(args, lambda agent, envelope: agent.incoming(envelope, moment=args.at))


def _process(args: argparse.Namespace, operation: Callable[[Agent, MessageEnvelope], Outcome]) -> int:
    config = load_config(args.config)
    envelope = MessageEnvelope(
        sender=args.sender.strip("<>"), recipients=tuple(args.rcpt), message=sys.stdin.buffer.read()
    )
    agent = Agent(config)
    try:
        outcome = operation(agent, envelope)
    except NoTrustedRecipients as exc:
        _report_removed(exc.rejected)
        raise
    finally:
        agent.close()
    _report_removed(outcome.rejected)
    sys.stdout.buffer.write(spool.take(outcome.message))
    sys.stdout.buffer.flush()
    return EX_OK


def _report_removed(rejected: dict[str, DirectMilterError]) -> None:
    for address, error in rejected.items():
        print(f"directmilter: removed {address}: {error.reason}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from directmilter.milter.app import run  # pymilter is needed only here

    config = load_config(args.config)
    configure(args.log_level if args.log_level != "warning" else "info", json=args.log_format == "json")
    run(config, socket_override=args.socket)
    return EX_OK


def _lookup(args: argparse.Namespace) -> int:
    from directmilter.agent.lookup import explain

    agent = Agent(load_config(args.config))
    try:
        for line in explain(agent.context, args.address.strip("<>"), args.sender, args.at):
            print(line)
    finally:
        agent.close()
    return EX_OK


def _check_config(args: argparse.Namespace) -> int:
    config: Config = load_config(args.config)
    for line in describe(config):
        print(line)
    return EX_OK


def _fail(exc: BaseException) -> int:
    reply = reply_for(exc)
    kind = "deferred" if reply.temporary else "rejected"
    if isinstance(exc, ConfigError):
        kind = "configuration error"
    detail = "" if isinstance(exc, DirectMilterError) else f" ({type(exc).__name__})"
    print(f"directmilter: {kind} ({reply.status}): {reason_for(exc)}{detail}", file=sys.stderr)
    return EX_CONFIG if isinstance(exc, ConfigError) else reply.exit_code

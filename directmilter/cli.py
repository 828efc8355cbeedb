"""The ``directmilter`` command: the agent's two operations on a file, and configuration checks.

Every failure ends in one line on stderr and a sysexits.h exit code (see :mod:`directmilter.replies`); stdout gets
the processed message only when processing succeeded, so a pipeline can never pick up half a result or plaintext
after a refusal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from directmilter import __version__
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
    return parser


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
    sys.stdout.buffer.write(outcome.message)
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

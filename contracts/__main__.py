"""`python -m contracts`: the wire contract for clients in other languages (pydantic only).

The document is chosen explicitly (`schema` or `asyncapi`), so that `--help`, or no argument at
all, explains instead of printing a page of JSON."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from contracts import names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m contracts",
        description=f"Print the coupon worker's wire contract v{names.CONTRACT_VERSION} "
        "(docs/contract.md) for clients in other languages.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"wire contract v{names.CONTRACT_VERSION}",
        help="print the contract version and exit",
    )
    documents = parser.add_subparsers(dest="document", required=True, metavar="DOCUMENT")
    documents.add_parser("schema", help="JSON Schema of every command, event and reply")
    documents.add_parser("asyncapi", help="AsyncAPI 3.0 document (channels and operations)")
    relay = documents.add_parser(
        "relay",
        help="publish the commands staged in an outbox table (the `outbox` extra)",
        description="Publish the commands staged in an outbox table (contracts.outbox) until "
        "stopped. URLs from the environment: COUPON_RELAY_DATABASE_URL, COUPON_RELAY_AMQP_URL.",
    )
    try:
        from contracts.outbox.command import add_arguments
    except ImportError:  # without the extra: `relay` says what to install when run
        relay.set_defaults(missing_extra=True)
    else:
        add_arguments(relay)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.document == "relay":
        if getattr(args, "missing_extra", False):
            raise SystemExit("relay: install coupon-contracts[outbox] (SQLAlchemy, aio-pika)")
        from contracts.outbox.command import main as relay

        raise SystemExit(relay(args))
    if args.document == "schema":
        from contracts.schema import main as print_schema

        print_schema()
    else:
        from contracts.asyncapi import main as print_asyncapi

        print_asyncapi()


if __name__ == "__main__":
    main()

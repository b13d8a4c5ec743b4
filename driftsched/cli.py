"""The `driftsched` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from driftsched.results import command_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftsched", description="QoS-aware multi-tenant LLM scheduling")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    from driftsched.sim import command as simulate

    sim = sub.add_parser("simulate", help="run the policies on a workload or trace in the simulator")
    simulate.add_arguments(sim)
    sim.set_defaults(handler=simulate.run)

    from driftsched.bench import command as bench

    loadgen = sub.add_parser("loadgen", help="open-loop multi-tenant load against a live endpoint")
    bench.add_loadgen_arguments(loadgen)
    loadgen.set_defaults(handler=bench.run_loadgen)
    bench_parser = sub.add_parser("bench", help="benchmarks of the live service")
    bench_sub = bench_parser.add_subparsers(dest="bench_command", required=True)
    live = bench_sub.add_parser("live", help="every policy on the live Serve app; one comparison report")
    bench.add_live_arguments(live)
    live.set_defaults(handler=bench.run_live)

    from driftsched.docs import command as docs

    docs_parser = sub.add_parser(
        "docs", help="regenerate docs/configuration.md and sync the results included in README.md and docs/"
    )
    docs.add_arguments(docs_parser)
    docs_parser.set_defaults(handler=docs.run)

    from driftsched import tiny_model

    tiny = sub.add_parser("make-tiny-model", help="build a tiny random Llama + tokenizer for vLLM on CPU")
    tiny_model.add_arguments(tiny)
    tiny.set_defaults(handler=tiny_model.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = command_line("driftsched", argv)  # what results pages record
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except (OSError, ValueError) as exc:
        print(f"driftsched: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`llama-tq`: run the bundled llama.cpp tools, the demo, and small reports."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from . import bundled

USAGE = """\
usage: llama-tq COMMAND [ARGS...]

Bundled llama.cpp programs (all their flags work, e.g. -ctk/-ctv, -fa, -c, -ngl):
  cli, completion, server, perplexity, bench, finetune, quantize

llama-tq commands:
  demo        download the test model, run a short completion and a KV-cache memory report
  kv-report   KV-cache bytes per cache-type pair for a model and context length
  info        what this build is (upstream commit, patch series, backends)
  test-model  print the path of the test model (downloading it on first use)

`llama-tq COMMAND --help` for a command's options.
"""


def _demo(argv: list[str]) -> int:
    from . import kv_report, testmodel

    p = argparse.ArgumentParser(prog="llama-tq demo", description=_demo.__doc__)
    p.add_argument("-m", "--model", help="GGUF model (default: the SmolLM2-135M test model)")
    p.add_argument("-p", "--prompt", default="The three primary colors are")
    p.add_argument("-n", "--n-predict", type=int, default=32)
    p.add_argument("-ctk", "--cache-type-k", default="ktq4")
    p.add_argument("-ctv", "--cache-type-v", default="vtq3")
    p.add_argument("-c", "--ctx-size", type=int, default=8192, help="context for the memory report")
    args = p.parse_args(argv)

    model = args.model or str(testmodel.test_model_path())
    print(f"== completion ({args.cache_type_k}/{args.cache_type_v} KV cache) with {model}", flush=True)
    result = bundled.run_tool("completion", [
        "-m", model, "-p", args.prompt, "-n", str(args.n_predict), "-no-cnv", "--temp", "0",
        "-c", "2048", "-fa", "on", "-ctk", args.cache_type_k, "-ctv", args.cache_type_v,
        "--no-warmup", "-t", "2",
    ], stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        print(f"llama-completion failed with exit code {result.returncode}", file=sys.stderr)
        return result.returncode
    print()
    print(f"== KV-cache memory at n_ctx={args.ctx_size}")
    pairs = dict.fromkeys([*kv_report.DEFAULT_PAIRS, (args.cache_type_k, args.cache_type_v)])
    print(kv_report.format_table(kv_report.measure(model, args.ctx_size, tuple(pairs))))
    return 0


_demo.__doc__ = "Download the test model, run a short completion and print a KV-cache memory report."


def _kv_report(argv: list[str]) -> int:
    from . import kv_report

    p = argparse.ArgumentParser(prog="llama-tq kv-report", description="KV-cache bytes per cache-type pair.")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-c", "--ctx-size", type=int, default=8192)
    p.add_argument("--pairs", default=",".join(f"{k}/{v}" for k, v in kv_report.DEFAULT_PAIRS),
                   help="comma-separated K/V pairs, e.g. f16/f16,q8_0/q4_0")
    args = p.parse_args(argv)
    pairs = []
    for item in args.pairs.split(","):
        k, sep, v = item.partition("/")
        if not sep:
            p.error(f"pair '{item}' is not of the form K/V")
        pairs.append((k, v))
    print(kv_report.format_table(kv_report.measure(args.model, args.ctx_size, tuple(pairs))))
    return 0


def _info(argv: list[str]) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def _test_model(argv: list[str]) -> int:
    from . import testmodel

    print(testmodel.test_model_path())
    return 0


COMMANDS = {"demo": _demo, "kv-report": _kv_report, "info": _info, "test-model": _test_model}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command in COMMANDS:
        try:
            return COMMANDS[command](rest)
        except (ValueError, RuntimeError, FileNotFoundError) as e:
            print(f"llama-tq {command}: error: {e}", file=sys.stderr)
            return 1
    if command in bundled.TOOLS or command.startswith("llama-"):
        try:
            bundled.exec_tool(command, rest)
        except bundled.ToolNotFoundError as e:
            print(f"llama-tq: {e}", file=sys.stderr)
            return 1
    print(f"llama-tq: unknown command '{command}'\n\n{USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())

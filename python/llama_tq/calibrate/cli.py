"""``tq-calibrate``: design and inspect llama-tq KV-cache codebooks.

Subcommands: ``theory`` (Lloyd-Max on an analytic source), ``trellis`` (train/evaluate vtq_2 trellis
tables), ``from-samples`` (fit codebooks to K/V samples from an .npz), ``k-means`` (per-layer K means for
K centering, ``LLAMA_TQ_K_MEANS``), ``k-profiles`` (query folding and profile tables of the ktqp K caches,
``LLAMA_TQ_K_PROFILES``), ``show`` (verify and summarise a
codebook file), ``header`` (codebook file -> C header), ``default`` (regenerate the compiled-in default
codebook file and header).

Bad input exits with status 2 and a one-line ``tq-calibrate <cmd>: error: ...`` message, never a
traceback, and never leaves a partial output file (all outputs are written atomically after every
computation has succeeded).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text, check_writable
from .codebook_file import (
    FILE_SUFFIX,
    Codebook,
    format_float,
    read_codebook,
    render_codebook,
    write_codebook,
)
from .defaults import (
    DEFAULT_BASENAME,
    DEFAULT_EVAL_BLOCKS,
    DEFAULT_TRELLIS_BLOCKS,
    DEFAULT_TRELLIS_ITERATIONS,
    REGENERATE_HINT,
    add_gaussian_levels,
    add_trellis_entry,
    build_default,
    set_trellis_params,
    train_and_evaluate,
)
from .distributions import DISTRIBUTION_NAMES, Gaussian, make_distribution
from .errors import CalibrationError
from .header import render_header
from .lloyd_max import LloydMaxResult, lloyd_max, mse_of_levels, shannon_bound
from .trellis import (
    DEFAULT_TABLE_SEED,
    DEFAULT_TRAIN_SEED,
    TRELLIS_K,
    TrellisEvaluation,
    TrellisSpec,
    default_state_bits,
    evaluate_trellis,
    initial_table,
)
from .version import TOOL_NAME, TOOL_VERSION

PROG = TOOL_NAME


# --------------------------------------------------------------------------------------------------
# argument types
# --------------------------------------------------------------------------------------------------


def _int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be in [{lo}, {hi}], got {value}")
        return value

    return parse


def _nonneg_int(what: str) -> Callable[[str], int]:
    return _int_in(0, 2**63 - 1, what)


def _check_output(path: str | None, suffix: str | None = None) -> None:
    """Fail before any long computation if an output could not be written."""
    if path is None:
        return
    p = check_writable(path)
    if suffix is not None and p.suffix != suffix:
        raise CalibrationError(f"output {p} should end in {suffix}")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# --------------------------------------------------------------------------------------------------
# theory
# --------------------------------------------------------------------------------------------------


def _cmd_theory(args: argparse.Namespace) -> int:
    _check_output(args.plot, ".png")
    if args.dist != "beta" and (args.d is not None or args.unit_norm):
        raise CalibrationError("--d and --unit-norm apply to --dist beta only")
    dist = make_distribution(args.dist, d=args.d if args.d is not None else 128, unit_variance=not args.unit_norm)
    counts = args.levels if args.levels else [1 << b for b in (args.bits or [1, 2, 3, 4])]
    symmetric = False if args.asymmetric else None
    print(
        f"source: {dist.name} (variance {_fmt(dist.variance)}); "
        f"{'asymmetric' if args.asymmetric else 'symmetric'} Lloyd-Max, exact integrals"
    )
    print(f"{'levels':>6} {'bits':>6} {'MSE':>12} {'bound 4^-b':>12} {'ratio':>7} {'iters':>6}")
    fits: list[LloydMaxResult] = []
    for n in counts:
        fit = lloyd_max(dist, n, symmetric=symmetric, progress=f"lloyd-max {n}" if args.progress else False)
        fits.append(fit)
        flag = "" if fit.converged else "  (not converged)"
        print(
            f"{n:>6} {fit.bits:>6.3g} {fit.mse:>12.6g} {fit.shannon_bound:>12.6g} {fit.ratio_to_bound:>7.3f} "
            f"{fit.iterations:>6}{flag}"
        )
    if args.show_levels or all(f.n_levels <= 16 for f in fits):
        for fit in fits:
            print(f"levels[{fit.n_levels}]:     " + " ".join(f"{v:.9g}" for v in fit.levels))
            print(f"thresholds[{fit.n_levels - 1}]: " + " ".join(f"{v:.9g}" for v in fit.thresholds))
    if args.plot:
        from .plot import theory_figure

        curve = {float(b): lloyd_max(dist, 1 << b, symmetric=symmetric).mse for b in range(1, 9)}
        for fit in fits:
            curve[fit.bits] = fit.mse
        theory_figure(dist, fits, curve, args.plot)
        print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------------------------------
# trellis
# --------------------------------------------------------------------------------------------------


def _trellis_table_lines(rows: list[tuple[TrellisSpec, float, float, float, TrellisEvaluation]]) -> list[str]:
    out = [
        f"{'k':>2} {'L':>3} {'states':>6} {'train MSE':>10} {'best':>9} {'time s':>7} "
        f"{'MSE σ=1':>9} {'MSE refit':>9} {'fp16 d':>9} {'4^-k':>9} {'ratio':>6} {'scalar LM':>9}"
    ]
    for spec, init_mse, best_mse, secs, ev in rows:
        scalar = lloyd_max(Gaussian(), 1 << spec.k).mse
        out.append(
            f"{spec.k:>2} {spec.L:>3} {spec.n_states:>6} {init_mse:>10.5f} {best_mse:>9.5f} {secs:>7.1f} "
            f"{ev.mse_known_sigma:>9.5f} {ev.mse_refit:>9.5f} {ev.mse_refit_fp16:>9.5f} "
            f"{shannon_bound(spec.k):>9.5f} {ev.mse_refit / shannon_bound(spec.k):>6.3f} {scalar:>9.5f}"
        )
    return out


def _cmd_trellis(args: argparse.Namespace) -> int:
    _check_output(args.plot, ".png")
    _check_output(args.output, FILE_SUFFIX)
    ks = sorted(set(args.k or TRELLIS_K))
    specs = [TrellisSpec(k, args.L if args.L is not None else default_state_bits(k)) for k in ks]
    if args.output is not None and any(s.k not in TRELLIS_K or default_state_bits(s.k) != s.L for s in specs):
        raise CalibrationError("-o writes format tables only: k in {2, 3, 4} with L = k + 6")
    cb = Codebook()
    add_gaussian_levels(cb)
    if args.no_train:
        cb.set_param("trellis.init", "gaussian-quantiles-permuted")
        cb.set_param("trellis.table_seed", args.table_seed)
    else:
        set_trellis_params(
            cb,
            iterations=args.iterations,
            n_blocks=args.train_blocks,
            seed=args.seed,
            table_seed=args.table_seed,
            eval_blocks=args.eval_blocks,
        )
    rows = []
    evals: dict[int, TrellisEvaluation] = {}
    for spec in specs:
        if args.no_train:
            table = initial_table(spec, args.table_seed)
            ev = evaluate_trellis(table, spec, n_blocks=args.eval_blocks)
            rows.append((spec, float("nan"), float("nan"), 0.0, ev))
            if args.output is not None:
                cb.add(f"trellis{spec.k}", table, {"L": str(spec.L), "mse_refit": format_float(ev.mse_refit)})
        else:
            res, ev = train_and_evaluate(
                spec,
                iterations=args.iterations,
                n_blocks=args.train_blocks,
                seed=args.seed,
                table_seed=args.table_seed,
                eval_blocks=args.eval_blocks,
                progress=args.progress,
            )
            rows.append((spec, res.history[0], res.history[res.best_iteration], res.seconds, ev))
            if args.output is not None:
                add_trellis_entry(cb, res, ev)
        evals[spec.k] = ev
    what = (
        "initial tables (no training)"
        if args.no_train
        else (f"{args.train_blocks} training blocks x {args.iterations} iterations")
    )
    print(f"trellis on N(0,1): {what}; MSE on {args.eval_blocks} fresh blocks of {specs[0].T}")
    print("\n".join(_trellis_table_lines(rows)))
    if args.output is not None:
        digest = write_codebook(args.output, cb)
        print(f"wrote {args.output} (fnv1a64 {digest})")
    if args.plot:
        from .plot import mse_vs_bits_figure

        scalar = {float(b): lloyd_max(Gaussian(), 1 << b).mse for b in range(1, 9)}
        mse_vs_bits_figure(scalar, evals, args.plot)
        print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------------------------------
# from-samples
# --------------------------------------------------------------------------------------------------


def _cmd_from_samples(args: argparse.Namespace) -> int:
    from .samples import calibrate_from_samples, file_sha256, load_samples_npz, normalize_blocks

    _check_output(args.output, FILE_SUFFIX)
    _check_output(args.plot, ".png")
    k, v = load_samples_npz(args.samples)
    result = calibrate_from_samples(
        k,
        v,
        bits=args.bits or (2, 3, 4),
        per_layer=args.per_layer,
        symmetric=True if args.symmetric else None,
        trellis=args.trellis,
        trellis_iterations=args.trellis_iterations,
        progress=args.progress,
    )
    cb = result.codebook
    cb.set_param("samples.file", _safe_token(os.path.basename(args.samples)))
    cb.set_param("samples.sha256", file_sha256(args.samples))
    print(f"{args.samples}: K layers {sorted(k)}, V layers {sorted(v)}")
    print(f"{'entry':<18} {'blocks':>8} {'MSE':>10} {'4^-b':>9} {'ratio':>6} {'MSE of N(0,1) LM':>16}")
    for name in cb.names():
        if name in result.fits:
            fit = result.fits[name]
            gauss = _gaussian_mse(fit.n_levels)
            print(
                f"{name:<18} {result.n_blocks.get(name, 0):>8} {fit.mse:>10.5f} {fit.shannon_bound:>9.5f} "
                f"{fit.ratio_to_bound:>6.3f} {gauss:>16.5f}"
            )
        elif name in result.trellis:
            res = result.trellis[name]
            print(
                f"{name:<18} {res.n_blocks:>8} {res.history[res.best_iteration]:>10.5f} "
                f"(trellis training MSE, initial {res.history[0]:.5f})"
            )
    digest = write_codebook(args.output, cb)
    print(f"wrote {args.output} (fnv1a64 {digest})")
    if args.plot:
        from .plot import samples_figure

        pooled = {
            kind: np.concatenate([normalize_blocks(a) for a in layers.values()])
            for kind, layers in (("k", k), ("v", v))
            if layers
        }
        samples_figure(pooled, result.fits, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_from_model(args: argparse.Namespace) -> int:
    from .model_samples import collect_model_samples, save_samples_npz

    _check_output(args.output, FILE_SUFFIX)
    _check_output(args.plot, ".png")
    args.samples = args.samples_out or str(Path(args.output).with_suffix(".npz"))
    _check_output(args.samples, ".npz")
    samples = collect_model_samples(args.model, args.text, n_ctx=args.ctx_size, n_chunks=args.chunks,
                                    n_threads=args.threads, progress=args.progress)
    save_samples_npz(args.samples, samples)
    rows = sum(a.shape[0] for key, a in samples.items() if key.startswith("k."))
    print(f"{args.model}: {rows} K rows over {sum(k.startswith('k.') for k in samples)} layers -> {args.samples}")
    return _cmd_from_samples(args)


def _model_run(args: argparse.Namespace, unset: Sequence[str], **collect: object
               ) -> tuple[object, dict[str, np.ndarray]]:
    """(model, rows) of a model run on a text (k-means, k-profiles), with the variables in `unset` unset (the run
    must see the cache as it is), and llama.cpp's refusals as CalibrationError."""
    import contextlib

    from .. import _core
    from .k_means import env_without
    from .model_samples import collect_model_samples

    _check_output(args.output, ".gguf")
    try:
        model = _core.Model(args.model)
    except (ValueError, RuntimeError) as e:
        raise CalibrationError(str(e)) from e
    try:
        with contextlib.ExitStack() as stack:
            for name in unset:
                stack.enter_context(env_without(name))
            rows = collect_model_samples(args.model, args.text, n_ctx=args.ctx_size, n_chunks=args.chunks,
                                         n_threads=args.threads, progress=args.progress, model=model, **collect)
    except RuntimeError as e:  # llama.cpp refused the context (e.g. a head size the ktq caches cannot hold)
        raise CalibrationError(str(e)) from e
    return model, rows


def _cmd_k_means(args: argparse.Namespace) -> int:
    from .k_means import ENV, estimate_means, model_rope, position_mean, write_means

    model, rows = _model_run(args, [ENV])
    arch, rope_params = model_rope(model)
    n_head_kv = int(model.info["n_head_kv"])  # type: ignore[attr-defined]
    means = estimate_means(rows, args.ctx_size, n_head_kv, rope_params)
    n_tokens = next(a.shape[0] for k, a in rows.items() if k.startswith("k."))
    write_means(args.output, arch, means, source=Path(args.model).name, n_tokens=n_tokens)
    # what the runtime will subtract at a context of --ctx-size, against the rows' energy
    print(f"{args.model} ({arch}): K means of {len(means)} layers from {n_tokens} tokens -> {args.output}")
    print("layer  |mean|^2 / mean |k|^2 at n_ctx " + str(args.ctx_size))
    for il in sorted(means):
        x = rows[f"k.{il}"].astype(np.float64)
        c = means[il] if rope_params is None else position_mean(means[il], rope_params, args.ctx_size)
        print(f"{il:5d}  {float((c ** 2).sum()) / float((x ** 2).sum(axis=1).mean()):.3f}")
    print(f"use: {ENV}={args.output} llama-cli -m {args.model} -ctk ktq2 -ctv vtq2 ...")
    return 0


def _cmd_k_profiles(args: argparse.Namespace) -> int:
    from .k_means import ENV as K_MEANS_ENV
    from .k_means import model_rope
    from .k_profiles import ENV, fit_k_profiles, write_k_profiles

    model, rows = _model_run(args, [K_MEANS_ENV, ENV], cache_types=("f16", "f16"), queries=True)
    arch, rope_params = model_rope(model)
    if rope_params is None:
        raise CalibrationError(f"{arch}: a model without RoPE (ktqp folds RoPE pairs)")
    n_head, n_head_kv = int(model.info["n_head"]), int(model.info["n_head_kv"])  # type: ignore[attr-defined]
    widths = tuple(sorted(set(args.widths)))
    kp = fit_k_profiles(rows, n_head, n_head_kv, rope_params, widths, n_profiles=args.profiles, seed=args.seed)
    n_tokens = next(a.shape[0] for k, a in rows.items() if k.startswith("k."))
    write_k_profiles(args.output, arch, kp, source=Path(args.model).name, n_tokens=n_tokens)
    print(f"{args.model} ({arch}): query folding of {len(kp.folds)} layers from {n_tokens} tokens -> {args.output}")
    print("width  profiles  index bits  bits per coordinate: min  mean  max")
    for w, t in sorted(kp.tables.items()):
        b = t.bits
        print(f"{w:5d}  {len(b):8d}  {t.index_bits:10d}  {b.min():28d}  {b.mean():4.2f}  {b.max():3d}")
    widest = "ktqp3" if 3 in kp.tables else "ktqp2"
    print(f"use: {ENV}={args.output} llama-cli -m {args.model} -ctk {widest} -ctv vtq2 ...")
    return 0


def _gaussian_mse(n: int) -> float:
    return lloyd_max(Gaussian(), n).mse


def _safe_token(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_.,:=+-()/@" else "_" for ch in text) or "_"


# --------------------------------------------------------------------------------------------------
# show / header / default
# --------------------------------------------------------------------------------------------------


def _cmd_show(args: argparse.Namespace) -> int:
    cb = read_codebook(args.file)
    print(f"{args.file}: TQCB {cb.version}, fnv1a64 {cb.hash} (hash verified)")
    print(f"tool: {cb.tool} {cb.tool_version}")
    for key, value in cb.params.items():
        print(f"param {key} = {value}")
    print(f"{'entry':<18} {'values':>6} {'kind':<8} {'MSE on N(0,1)':>14} {'4^-b':>9} {'ratio':>6}  metadata")
    for name in cb.names():
        entry = cb.entries[name]
        meta = " ".join(f"{k}={v}" for k, v in entry.meta.items())
        if entry.kind == "levels":
            bits = int(np.log2(entry.values.size))
            mse = mse_of_levels(Gaussian(), entry.values.astype(np.float64))
            detail = f"{mse:>14.6g}"
        else:
            bits = int(np.log2(entry.values.size)) - 6
            if args.eval_blocks > 0:
                ev = evaluate_trellis(entry.values.astype(np.float64), TrellisSpec(bits), n_blocks=args.eval_blocks)
                mse = ev.mse_refit
                detail = f"{mse:>14.6g}"
            else:
                mse, detail = float("nan"), f"{'-':>14}"
        bound = shannon_bound(bits)
        ratio = mse / bound
        print(f"{name:<18} {entry.values.size:>6} {entry.kind:<8} {detail} {bound:>9.5f} {ratio:>6.3f}  {meta}")
    missing = cb.missing_defaults()
    if missing:
        print(f"not in this file (the runtime keeps its compiled defaults): {', '.join(missing)}")
    if args.eval_blocks > 0:
        print(f"(trellis MSE: block RMS + least-squares refit on {args.eval_blocks} fresh N(0,1) blocks)")
    return 0


def _cmd_header(args: argparse.Namespace) -> int:
    _check_output(args.output, ".h")
    cb = read_codebook(args.file)
    text = render_header(
        cb,
        os.path.basename(args.file),
        regenerate_hint=f"tq-calibrate header {os.path.basename(args.file)} -o {Path(args.output).name}",
    )
    atomic_write_text(args.output, text)
    print(f"wrote {args.output} (from {args.file}, fnv1a64 {cb.hash})")
    return 0


def _cmd_default(args: argparse.Namespace) -> int:
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CalibrationError(f"{out_dir} exists and is not a directory")
    if not out_dir.parent.is_dir():
        raise CalibrationError(f"cannot create {out_dir}: {out_dir.parent} does not exist")
    _check_output(args.plot, ".png")
    started = time.perf_counter()
    build = build_default(
        iterations=args.iterations,
        n_blocks=args.train_blocks,
        eval_blocks=args.eval_blocks,
        progress=args.progress,
    )
    data = render_codebook(build.codebook)
    build.codebook.hash = data[-17:-1].decode("ascii")
    cb_name = DEFAULT_BASENAME + FILE_SUFFIX
    header = render_header(build.codebook, cb_name, regenerate_hint=REGENERATE_HINT)
    out_dir.mkdir(exist_ok=True)
    atomic_write_bytes(out_dir / cb_name, data)
    atomic_write_text(out_dir / (DEFAULT_BASENAME + ".h"), header)
    rows = [
        (res.spec, res.history[0], res.history[res.best_iteration], res.seconds, build.evaluations[k])
        for k, res in build.trellis.items()
    ]
    print(f"{'bits':>4} {'Lloyd-Max MSE':>14} {'4^-b':>9} {'ratio':>6}")
    for b, fit in build.levels.items():
        print(f"{b:>4} {fit.mse:>14.6g} {fit.shannon_bound:>9.5f} {fit.ratio_to_bound:>6.3f}")
    print("\n".join(_trellis_table_lines(rows)))
    print(
        f"wrote {out_dir / cb_name} and {out_dir / (DEFAULT_BASENAME + '.h')} "
        f"(fnv1a64 {build.codebook.hash}, {time.perf_counter() - started:.1f} s)"
    )
    if args.plot:
        from .plot import mse_vs_bits_figure

        scalar = {float(b): lloyd_max(Gaussian(), 1 << b).mse for b in range(1, 9)}
        mse_vs_bits_figure(scalar, build.evaluations, args.plot)
        print(f"wrote {args.plot}")
    return 0


# --------------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------------


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--iterations",
        type=_int_in(0, 1000, "--iterations"),
        default=DEFAULT_TRELLIS_ITERATIONS,
        help="trellis training iterations (default %(default)s)",
    )
    p.add_argument(
        "--train-blocks",
        type=_int_in(1, 10_000_000, "--train-blocks"),
        default=DEFAULT_TRELLIS_BLOCKS,
        help="N(0,1) training blocks of 64 samples (default %(default)s)",
    )
    p.add_argument(
        "--eval-blocks",
        type=_int_in(1, 10_000_000, "--eval-blocks"),
        default=DEFAULT_EVAL_BLOCKS,
        help="fresh N(0,1) blocks for the reported MSE (default %(default)s)",
    )


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    """Options shared by from-samples and from-model: what to fit and what to write."""
    p.add_argument("--bits", type=_int_in(2, 4, "--bits"), nargs="+", metavar="B", help="2..4 (default 2 3 4)")
    p.add_argument("--per-layer", action="store_true", help="also write NAME@layer=N entries")
    p.add_argument("--symmetric", action="store_true", help="enforce symmetric levels (fit |x|)")
    p.add_argument("--trellis", action="store_true", help="also train trellis tables on the V samples")
    p.add_argument("--trellis-iterations", type=_int_in(0, 1000, "--trellis-iterations"), default=8)
    p.add_argument("--plot", metavar="PNG", help="histograms with the fitted levels")


def _add_model_run_args(p: argparse.ArgumentParser, default_ctx: int) -> None:
    """A model run on a text (from-model, k-means): the model, the text, and the windows it reads."""
    p.add_argument("model", metavar="MODEL.gguf")
    p.add_argument("text", metavar="TEXT.txt")
    p.add_argument("-c", "--ctx-size", type=_int_in(64, 1 << 20, "--ctx-size"), default=default_ctx)
    p.add_argument("--chunks", type=_int_in(1, 1 << 20, "--chunks"), default=4, help="windows of --ctx-size tokens")
    p.add_argument("-t", "--threads", type=_int_in(0, 1024, "--threads"), default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Design and inspect llama-tq KV-cache codebooks (ktq/vtq Lloyd-Max levels, vtq_2 trellis "
        "tables) and the versioned codebook files / C header built from them.",
    )
    parser.add_argument("--version", action="version", version=f"{TOOL_NAME} {TOOL_VERSION}")
    parser.add_argument("-q", "--quiet", dest="progress", action="store_false", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "theory",
        help="Lloyd-Max quantizer of an analytic source",
        description="Lloyd-Max quantizers of a unit-variance source with exact integrals; "
        "MSE against the Shannon bound 4^-b.",
    )
    p.add_argument(
        "--dist",
        choices=DISTRIBUTION_NAMES,
        default="gaussian",
        help="gaussian, beta (one coordinate of a random unit vector in R^d), laplace",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--bits",
        type=_int_in(1, 8, "--bits"),
        nargs="+",
        metavar="B",
        help="bits per sample, 1..8 (default 1 2 3 4)",
    )
    g.add_argument(
        "--levels",
        type=_int_in(2, 256, "--levels"),
        nargs="+",
        metavar="N",
        help="number of levels, 2..256 (any count)",
    )
    p.add_argument("--d", type=_int_in(2, 65536, "--d"), default=None, help="dimension for --dist beta (default 128)")
    p.add_argument(
        "--unit-norm",
        action="store_true",
        help="beta: keep the unit-vector scale (variance 1/d) instead of rescaling by sqrt(d)",
    )
    p.add_argument("--asymmetric", action="store_true", help="do not enforce symmetric levels")
    p.add_argument("--show-levels", action="store_true", help="print levels even for more than 16 levels")
    p.add_argument("--plot", metavar="PNG", help="density with thresholds/levels and MSE vs bits")
    p.set_defaults(func=_cmd_theory)

    p = sub.add_parser(
        "trellis",
        help="train and evaluate vtq_2 trellis tables",
        description="Train bitshift-trellis tables on N(0,1) blocks (tail-biting Viterbi, "
        "state = L stream bits) and report MSE on fresh blocks.",
    )
    p.add_argument("--k", type=_int_in(1, 8, "--k"), nargs="+", metavar="K", help="bits per sample (default 2 3 4)")
    p.add_argument("--L", type=_int_in(2, 16, "--L"), default=None, help="state bits (default k + 6, the format)")
    _add_training_args(p)
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=DEFAULT_TRAIN_SEED, help="training data seed")
    p.add_argument(
        "--table-seed",
        type=_nonneg_int("--table-seed"),
        default=DEFAULT_TABLE_SEED,
        help="seed of the initial state permutation",
    )
    p.add_argument("--no-train", action="store_true", help="evaluate the initial (untrained) tables only")
    p.add_argument("--plot", metavar="PNG", help="MSE vs bits: scalar Lloyd-Max, trellis, Shannon bound")
    p.add_argument("-o", "--output", metavar="FILE.tqcb", help="also write a codebook file (Gaussian levels + tables)")
    p.set_defaults(func=_cmd_trellis)

    p = sub.add_parser(
        "from-samples",
        help="fit codebooks to K/V samples (.npz)",
        description="Fit codebooks to post-rotation K/V samples stored in an .npz with arrays "
        "k.<layer> and v.<layer>; values are cut into 64-blocks along the last axis and "
        "divided by the block RMS, as the formats do.",
    )
    p.add_argument("samples", metavar="FILE.npz")
    p.add_argument("-o", "--output", metavar="FILE.tqcb", required=True)
    _add_fit_options(p)
    p.set_defaults(func=_cmd_from_samples)

    p = sub.add_parser(
        "from-model",
        help="fit codebooks to a model's own K/V rows (runs the model on a text)",
        description="Run a GGUF model on a text through llama_tq._core with ktq/vtq caches, collect the "
        "K/V rows the cache receives (after its Hadamard rotation), save them as an .npz and fit "
        "codebooks to them exactly as from-samples does.",
    )
    _add_model_run_args(p, default_ctx=512)
    p.add_argument("-o", "--output", metavar="FILE.tqcb", required=True)
    p.add_argument("--samples-out", metavar="FILE.npz", help="where to keep the rows (default: OUTPUT.npz)")
    _add_fit_options(p)
    p.set_defaults(func=_cmd_from_model)

    p = sub.add_parser(
        "k-means",
        help="per-layer K means for K centering (LLAMA_TQ_K_MEANS), from a model run on a text",
        description="Run a GGUF model on a text, undo the Hadamard rotation and RoPE of the K rows its cache "
        "receives, and write each layer's mean as a GGUF that LLAMA_TQ_K_MEANS=FILE hands to every llama.cpp "
        "tool. The cache then stores K minus that mean (attention is unchanged: the softmax cancels it).",
    )
    _add_model_run_args(p, default_ctx=2048)
    p.add_argument("-o", "--output", metavar="FILE.gguf", required=True)
    p.set_defaults(func=_cmd_k_means)

    p = sub.add_parser(
        "k-profiles",
        help="query folding and profile tables of the ktqp K caches (LLAMA_TQ_K_PROFILES), from a model run",
        description="Run a GGUF model on a text with an f16 cache, measure its queries' energy per RoPE pair and "
        "the keys it writes, and write the GGUF that LLAMA_TQ_K_PROFILES=FILE hands to every llama.cpp tool for "
        "-ctk ktqp2 / ktqp3: the per-layer folding factors and one table of bit profiles per width.",
    )
    _add_model_run_args(p, default_ctx=512)
    p.add_argument("-o", "--output", metavar="FILE.gguf", required=True)
    p.add_argument("--widths", type=_int_in(2, 3, "--widths"), nargs="+", default=[2, 3], metavar="B",
                   help="ktqp widths to fit (default 2 3)")
    p.add_argument("--profiles", type=_int_in(0, 1024, "--profiles"), default=0,
                   help="profiles per table (0: one per layer, KV head and 64-value block, at most 1024)")
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    p.set_defaults(func=_cmd_k_profiles)

    p = sub.add_parser(
        "show",
        help="verify a codebook file and print its entries",
        description="Verify hash, version and sizes of a codebook file; print entries with their "
        "MSE on N(0,1) against the Shannon bound.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--eval-blocks",
        type=_int_in(0, 1_000_000, "--eval-blocks"),
        default=256,
        help="N(0,1) blocks to evaluate trellis tables on (0: skip; default %(default)s)",
    )
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("header", help="generate the C header from a codebook file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", metavar="OUT.h", required=True)
    p.set_defaults(func=_cmd_header)

    p = sub.add_parser(
        "default",
        help="regenerate the default codebook file and header",
        description=f"Write {DEFAULT_BASENAME}{FILE_SUFFIX} and {DEFAULT_BASENAME}.h into DIR "
        "(Gaussian Lloyd-Max levels, trained trellis tables).",
    )
    p.add_argument("-o", "--output-dir", metavar="DIR", required=True)
    _add_training_args(p)
    p.add_argument("--plot", metavar="PNG", help="MSE vs bits of the generated codebook")
    p.set_defaults(func=_cmd_default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{PROG} {args.command}"
    try:
        return int(args.func(args))
    except CalibrationError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}: error:{where} {exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (no output written)", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``tq-finetune``: fine-tune a GGUF model with llama-tq's patched llama-finetune.

Validates everything up front (model, text, output path, --train-skip-regex, architecture), then trains in
checkpointed units, showing loss, tokens/s and ETA, and writes the fine-tuned GGUF atomically.

Bad input exits with status 2 and a one-line ``tq-finetune: error: ...`` before any compute; a failed run exits
with 1 and the reason; an interrupted one with 130 (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..atomic import atomic_copy, atomic_write_text
from .checkpoint import CheckpointDir, RunState, file_sha256
from .errors import FinetuneError
from .model_info import SAVER_UNVALIDATED_ARCHS, TrainPlan, compile_skip_regex, plan_training, read_model_info
from .progress import StepLosses, format_duration, is_error, is_important, parse_progress, split_stream
from .schedule import LrSchedule, split_text

PROG = "tq-finetune"
ENV_BIN = "LLAMA_TQ_FINETUNE_BIN"
ENV_STOP = "GGML_BACKWARD_STOP_UNSUPPORTED"
ENV_SAVER = "LLAMA_SAVER_ALLOW_UNTESTED"


class _Interrupted(Exception):
    pass


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune a GGUF model (F32 weights) on a text file with llama-tq's patched llama-finetune, "
                    "optionally freezing weights by name (--train-skip-regex), with atomic checkpoints and resume.",
        epilog="Arguments after `--` go to llama-finetune unchanged. The llama-finetune used is "
               f"${ENV_BIN} if set, else the one bundled with llama-tq. See docs/finetune.md.",
    )
    p.add_argument("-m", "--model", required=True, help="GGUF model to start from (F32 weights are trained)")
    p.add_argument("-f", "--file", required=True, help="training text (UTF-8)")
    p.add_argument("-o", "--output", required=True, help="where to write the fine-tuned GGUF")
    p.add_argument("--train-skip-regex", metavar="REGEX",
                   help="freeze the weights whose tensor names match REGEX (searched anywhere in the name)")
    p.add_argument("-c", "--ctx-size", type=int, default=256,
                   help="tokens per training window, a multiple of 256 (default: 256)")
    p.add_argument("-b", "--batch-size", type=int, help="tokens per optimizer step (default: ctx size)")
    p.add_argument("-ub", "--ubatch-size", type=int,
                   help="tokens per compute step (default: ctx size; smaller means K/V get no gradients)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the text (default: 2)")
    p.add_argument("-lr", "--learning-rate", type=float, default=1e-5, help="learning rate (default: 1e-5)")
    p.add_argument("-lr-min", "--learning-rate-min", type=float, default=-1.0,
                   help="decay the learning rate exponentially to this (per epoch, as llama-finetune)")
    p.add_argument("-decay-epochs", "--learning-rate-decay-epochs", type=float, default=-1.0,
                   help="reach -lr-min after this many epochs (default: all)")
    p.add_argument("-wd", "--weight-decay", type=float, default=0.0, help="weight decay (default: 0)")
    p.add_argument("-opt", "--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("-val-split", "--val-split", type=float, default=0.05,
                   help="fraction of each chunk used for validation (default: 0.05)")
    p.add_argument("-t", "--threads", type=int, help="CPU threads")
    p.add_argument("-ngl", "--n-gpu-layers", help="layers to offload to the GPU")
    p.add_argument("--checkpoint-dir", help="checkpoint directory (default: OUTPUT.ckpt)")
    p.add_argument("--checkpoints-per-epoch", type=int, default=1, metavar="K",
                   help="cut the text into K chunks and checkpoint after each (default: 1)")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in the checkpoint directory")
    p.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint and start over")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop (resumably) after N checkpoints in this invocation")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the last checkpoint model after the output is written")
    p.add_argument("--stop-unsupported-grads", action="store_true",
                   help=f"set {ENV_STOP}=1: stop gradients (logged) at ops without a backward pass "
                        "instead of failing; weights upstream of them then learn only through other paths")
    p.add_argument("--allow-untested-saver", action="store_true",
                   help=f"set {ENV_SAVER}=1: save architectures the model saver has not been validated for")
    p.add_argument("--finetune-bin", help=f"llama-finetune to run (default: ${ENV_BIN}, else the bundled one)")
    p.add_argument("--log-jsonl", help="also write one JSON line per step here (always in the checkpoint dir)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan, train nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="show all of llama-finetune's output")
    return p


# ---------------------------------------------------------------------------------------------------------
# validation


def resolve_binary(explicit: str | None) -> Path:
    if explicit:
        path, origin = Path(explicit), "--finetune-bin"
    elif os.environ.get(ENV_BIN):
        path, origin = Path(os.environ[ENV_BIN]), f"${ENV_BIN}"
    else:
        from .. import bundled

        try:
            return bundled.tool_path("finetune")
        except bundled.ToolNotFoundError as e:
            raise FinetuneError(str(e)) from None
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FinetuneError(f"{origin}: {path} is not an executable file")
    return path


def check_binary_patched(binary: Path) -> None:
    """llama-tq's patched llama-finetune knows --train-skip-regex; a stock one would ignore our guarantees."""
    try:
        r = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FinetuneError(f"cannot run {binary}: {e}") from None
    if "--train-skip-regex" not in (r.stdout + r.stderr):
        raise FinetuneError(
            f"{binary} lacks llama-tq's training patches (no --train-skip-regex): reinstall llama-tq, "
            f"or point ${ENV_BIN} at a patched build"
        )


def check_output(output: Path, model: Path) -> None:
    if output.exists() and output.is_dir():
        raise FinetuneError(f"output {output} is a directory")
    if output.resolve() == model.resolve():
        raise FinetuneError(f"output {output} is the input model; write the fine-tuned model elsewhere")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise FinetuneError(f"cannot write output {output}: directory {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise FinetuneError(f"cannot write output {output}: {e.strerror}") from None
    if output.exists() and not os.access(output, os.W_OK):
        raise FinetuneError(f"cannot write output {output}: permission denied")


def read_text(path: Path) -> str:
    if not path.is_file():
        raise FinetuneError(f"training text {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FinetuneError(f"cannot read training text {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise FinetuneError(f"training text {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise FinetuneError(f"training text {path} is empty")
    return text


def check_numbers(a: argparse.Namespace) -> None:
    if a.ctx_size <= 0 or a.ctx_size % 256:
        raise FinetuneError(f"-c {a.ctx_size}: llama.cpp pads the context to a multiple of 256, and training needs "
                            "-ub equal to it; use -c 256, 512, 768, ...")
    if a.batch_size is None:
        a.batch_size = a.ctx_size
    if a.ubatch_size is None:
        a.ubatch_size = min(a.batch_size, a.ctx_size)
    if a.batch_size <= 0 or a.ubatch_size <= 0:
        raise FinetuneError("-b and -ub must be positive")
    if a.ctx_size % a.batch_size:
        raise FinetuneError(f"-c {a.ctx_size} must be a multiple of -b {a.batch_size}")
    if a.batch_size % a.ubatch_size:
        raise FinetuneError(f"-b {a.batch_size} must be a multiple of -ub {a.ubatch_size}")
    if a.epochs < 1:
        raise FinetuneError("--epochs must be at least 1")
    if a.checkpoints_per_epoch < 1:
        raise FinetuneError("--checkpoints-per-epoch must be at least 1")
    if not (0.0 <= a.val_split < 1.0):
        raise FinetuneError("--val-split must be in [0, 1)")
    if not (a.learning_rate > 0 and math.isfinite(a.learning_rate)):
        raise FinetuneError("-lr must be a positive number")
    if a.stop_after is not None and a.stop_after < 1:
        raise FinetuneError("--stop-after must be at least 1")
    if a.resume and a.overwrite:
        raise FinetuneError("--resume and --overwrite contradict each other")


# ---------------------------------------------------------------------------------------------------------
# running


@dataclass
class UnitResult:
    train_loss: float = math.nan
    train_acc: float = math.nan
    val_loss: float = math.nan
    steps: int = 0
    seconds: float = 0.0


class Reporter:
    """Progress display (a line per step, or one updating line on a terminal) and the JSON-lines step log."""

    def __init__(self, out: TextIO, jsonl: list[TextIO], n_units: int, ubatch: int, epochs: int, chunks: int):
        self.out = out
        self.tty = out.isatty()
        self.jsonl = jsonl
        self.n_units = n_units
        self.ubatch = ubatch
        self.epochs = epochs
        self.chunks = chunks
        self.sec_per_step: float | None = None
        self.steps_per_unit: int | None = None

    def step(self, unit: int, phase: str, p: Any, loss: float | None, t_rate: float | None) -> None:
        epoch, chunk = divmod(unit, self.chunks)
        rate = f"{self.ubatch / t_rate:7.0f} tok/s" if t_rate else "   -- tok/s"
        eta = "--:--:--"
        if phase == "train" and t_rate:
            self.sec_per_step = t_rate
            self.steps_per_unit = p.n_steps
            left = (p.n_steps - p.step) + p.n_steps * (self.n_units - unit - 1)
            eta = format_duration(left * t_rate)
        where = f"epoch {epoch + 1}/{self.epochs}" + (f" chunk {chunk + 1}/{self.chunks}" if self.chunks > 1 else "")
        loss_s = f"{loss:.4f}" if loss is not None and math.isfinite(loss) else ("nan" if loss is not None else "--")
        line = (f"{where} {phase:5s} step {p.step:4d}/{p.n_steps:<4d} loss {loss_s} (mean {p.mean_loss:.4f}) "
                f"acc {p.accuracy:5.2f}% {rate} ETA {eta}")
        if self.tty:
            end = "\n" if p.step == p.n_steps else ""
            self.out.write("\r" + line + " " * 4 + end)
        else:
            self.out.write(line + "\n")
        self.out.flush()
        rec = {"unit": unit, "epoch": epoch, "chunk": chunk, "phase": phase, "step": p.step, "n_steps": p.n_steps,
               "loss": loss, "mean_loss": p.mean_loss, "accuracy": p.accuracy,
               "tokens_per_s": (self.ubatch / t_rate) if t_rate else None, "time": time.time()}
        for f in self.jsonl:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    def message(self, text: str) -> None:
        if self.tty:
            self.out.write("\r")
        self.out.write(text + "\n")
        self.out.flush()


def run_unit(cmd: list[str], env: dict[str, str], unit: int, rep: Reporter, raw_log: TextIO,
             verbose: bool, first: bool) -> tuple[int, UnitResult, list[str]]:
    """Run one llama-finetune invocation, streaming its progress; returns (exit code, result, last log lines).

    Log lines worth a look (trainable counts, stop-gradients, warnings) are shown for the first unit of this
    invocation; errors always; everything with verbose."""
    res = UnitResult()
    tail: deque[str] = deque(maxlen=60)
    important: list[str] = []
    losses = {"train": StepLosses(), "val": StepLosses()}
    t_first: dict[str, tuple[float, int]] = {}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    buf = ""
    try:
        while True:
            data = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not data:
                break
            buf += data.decode("utf-8", errors="replace")
            pieces, buf = split_stream(buf)
            for piece in pieces:
                p = parse_progress(piece)
                if p is None:
                    raw_log.write(piece + "\n")
                    tail.append(piece)
                    if verbose or (is_important(piece) and (first or is_error(piece))):
                        important.append(piece)
                        rep.message(f"[llama-finetune] {piece.strip()}")
                    continue
                loss = losses[p.phase].update(p)
                if loss is None:
                    continue
                now = time.monotonic()
                if p.phase not in t_first:
                    t_first[p.phase] = (now, p.step)
                t_start, s_start = t_first[p.phase]
                t_rate = (now - t_start) / (p.step - s_start) if p.step > s_start else None
                rep.step(unit, p.phase, p, loss, t_rate)
                if p.phase == "train":
                    res.train_loss, res.train_acc, res.steps = p.mean_loss, p.accuracy, p.step
                else:
                    res.val_loss = p.mean_loss
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise _Interrupted() from None
    res.seconds = time.monotonic() - t0
    if buf.strip():
        raw_log.write(buf + "\n")
        tail.append(buf)
    raw_log.flush()
    return rc, res, list(tail)


def explain_failure(rc: int, tail: list[str], args: argparse.Namespace) -> str:
    lines = [ln.strip() for ln in tail if ln.strip()]
    errs = [ln for ln in lines if any(k in ln.lower() for k in ("error", "abort", "assert", "failed", "refusing"))]
    detail = errs[-1] if errs else (lines[-1] if lines else "no output")
    msg = f"llama-finetune failed (exit code {rc}): {detail}"
    joined = "\n".join(lines)
    if ENV_STOP in joined and not args.stop_unsupported_grads:
        msg += ("\n  hint: an op on the path to the loss has no backward pass; freeze the weights upstream of it "
                "with --train-skip-regex, or pass --stop-unsupported-grads to stop gradients there (logged)")
    if "too few for one training window" in joined and args.checkpoints_per_epoch > 1:
        msg += "\n  hint: each checkpoint chunk is too short; use fewer --checkpoints-per-epoch or more text"
    return msg


def fingerprint(args: argparse.Namespace, model: Path, data: Path, skip: str | None) -> dict[str, Any]:
    st = model.stat()
    return {
        "model": str(model.resolve()), "model_size": st.st_size, "model_mtime_ns": st.st_mtime_ns,
        "data": str(data.resolve()), "data_sha256": file_sha256(data),
        "train_skip_regex": skip, "ctx": args.ctx_size, "batch": args.batch_size, "ubatch": args.ubatch_size,
        "epochs": args.epochs, "chunks": args.checkpoints_per_epoch, "lr0": args.learning_rate,
        "lr_min": args.learning_rate_min, "decay_epochs": args.learning_rate_decay_epochs,
        "wd": args.weight_decay, "optimizer": args.optimizer, "val_split": args.val_split,
    }


def print_plan(out: TextIO, info: Any, plan: TrainPlan, args: argparse.Namespace, n_units: int,
               sched: LrSchedule) -> None:
    out.write(f"{PROG}: {info.path} (arch {info.arch}): {len(plan.trainable)} trainable tensors "
              f"({_mib(plan.trainable_bytes)})")
    if args.train_skip_regex:
        out.write(f", {len(plan.frozen)} frozen by --train-skip-regex ({_mib(plan.frozen_bytes)})")
    if plan.not_f32:
        out.write(f", {len(plan.not_f32)} not F32 (never trained)")
    out.write("\n")
    lrs = ", ".join(f"{sched.lr(e):.3g}" for e in range(min(args.epochs, 6)))
    out.write(f"{PROG}: {args.epochs} epoch(s) x {args.checkpoints_per_epoch} chunk(s) = {n_units} checkpointed "
              f"unit(s); ctx {args.ctx_size}, batch {args.batch_size}, ubatch {args.ubatch_size}, "
              f"{args.optimizer} lr per epoch {lrs}{' ...' if args.epochs > 6 else ''}\n")
    out.flush()


def run(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    try:
        return _run(args, extra, out)
    except FinetuneError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, extra: list[str], out: TextIO) -> int:
    # -- validation: everything before any compute --------------------------------------------------------
    check_numbers(args)
    model = Path(args.model)
    info = read_model_info(model)
    data = Path(args.file)
    text = read_text(data)
    output = Path(args.output)
    check_output(output, model)
    skip = compile_skip_regex(args.train_skip_regex) if args.train_skip_regex is not None else None
    plan = plan_training(info, skip)
    if info.arch in SAVER_UNVALIDATED_ARCHS and not args.allow_untested_saver:
        raise FinetuneError(
            f"the model saver has not been validated for architecture {info.arch!r}, so the fine-tuned model "
            f"could not be written; pass --allow-untested-saver ({ENV_SAVER}=1) to write it anyway"
        )

    K = args.checkpoints_per_epoch
    chunks = split_text(text, K)
    if any(not c.strip() for c in chunks):
        raise FinetuneError(f"the text is too short to cut into {K} chunks; use fewer --checkpoints-per-epoch")
    n_units = args.epochs * K
    sched = LrSchedule(args.learning_rate, args.learning_rate_min, args.learning_rate_decay_epochs, args.epochs)

    ckpt = CheckpointDir(Path(args.checkpoint_dir) if args.checkpoint_dir else Path(str(output) + ".ckpt"))
    fp = fingerprint(args, model, data, args.train_skip_regex)
    if ckpt.exists() and not args.resume and not args.overwrite:
        raise FinetuneError(f"{ckpt.path} already holds a run; pass --resume to continue it or --overwrite to "
                            "start over")
    if args.resume:
        if not ckpt.exists():
            raise FinetuneError(f"nothing to resume: {ckpt.state_path} does not exist")
        state = ckpt.load()
        diff = sorted(k for k in set(fp) | set(state.fingerprint) if fp.get(k) != state.fingerprint.get(k))
        if diff:
            raise FinetuneError(f"cannot resume: the run in {ckpt.path} was started with different "
                                f"{', '.join(diff)}; use the same arguments, or --overwrite")
        if state.finished:
            out.write(f"{PROG}: the run in {ckpt.path} has finished already; the model is in {output}\n")
            return 0
    else:
        state = RunState(fp, n_units)

    binary = resolve_binary(args.finetune_bin)
    check_binary_patched(binary)

    print_plan(out, info, plan, args, n_units, sched)
    if args.dry_run:
        out.write(f"{PROG}: dry run, nothing trained; would run {binary}\n")
        return 0

    # -- training ---------------------------------------------------------------------------------------
    ckpt.path.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        ckpt.clean(keep=set())
        ckpt.save(state)  # claims the directory: a second run now needs --resume/--overwrite
    ckpt.clean(keep={state.model} if state.model else set())

    chunk_paths: list[Path] = []
    if K == 1:
        chunk_paths = [data]
    else:
        (ckpt.path / "data").mkdir(exist_ok=True)
        for i, c in enumerate(chunks):
            cp = ckpt.path / "data" / f"chunk-{i:03d}.txt"
            if not cp.is_file() or cp.read_text(encoding="utf-8") != c:
                atomic_write_text(cp, c)
            chunk_paths.append(cp)

    env = dict(os.environ)
    if args.stop_unsupported_grads:
        env[ENV_STOP] = "1"
    if args.allow_untested_saver:
        env[ENV_SAVER] = "1"

    jsonl_files = [(ckpt.path / "log.jsonl").open("a", encoding="utf-8")]
    if args.log_jsonl:
        jsonl_files.append(Path(args.log_jsonl).open("a", encoding="utf-8"))  # noqa: SIM115 (closed in the finally below)
    raw_log = (ckpt.path / "finetune.log").open("a", encoding="utf-8")
    rep = Reporter(out, jsonl_files, n_units, args.ubatch_size, args.epochs, K)
    done_now = 0
    try:
        if state.done:
            rep.message(f"{PROG}: resuming after {state.done} of {n_units} unit(s) from {ckpt.path / state.model}")
        while state.done < n_units:
            unit = state.done
            epoch, chunk = divmod(unit, K)
            start_model = ckpt.path / state.model if state.model else model
            lr = sched.lr(epoch)
            partial = ckpt.partial_path(unit)
            cmd = [str(binary), "-m", str(start_model), "-f", str(chunk_paths[chunk]), "-o", str(partial),
                   "-c", str(args.ctx_size), "-b", str(args.batch_size), "-ub", str(args.ubatch_size),
                   "--epochs", "1", "-lr", repr(lr), "-wd", repr(args.weight_decay), "-opt", args.optimizer,
                   "-val-split", repr(args.val_split)]
            if args.train_skip_regex is not None:
                cmd += ["--train-skip-regex", args.train_skip_regex]
            if args.threads:
                cmd += ["-t", str(args.threads)]
            if args.n_gpu_layers is not None:
                cmd += ["-ngl", str(args.n_gpu_layers)]
            cmd += extra
            raw_log.write(f"== unit {unit}: {' '.join(cmd)}\n")
            rc, res, tail = run_unit(cmd, env, unit, rep, raw_log, args.verbose, first=done_now == 0)
            if rc != 0:
                raise FinetuneError(explain_failure(rc, tail, args))
            if not (math.isfinite(res.train_loss)):
                raise FinetuneError(f"unit {unit + 1}: the training loss is not finite ({res.train_loss}); "
                                    f"try a smaller -lr (log: {ckpt.path / 'finetune.log'})")
            name = ckpt.commit_model(unit)
            old = state.model
            state.model = name
            state.done = unit + 1
            state.history.append({
                "unit": unit, "epoch": epoch, "chunk": chunk, "lr": lr, "train_loss": res.train_loss,
                "train_accuracy": res.train_acc, "val_loss": None if math.isnan(res.val_loss) else res.val_loss,
                "steps": res.steps, "tokens": res.steps * args.ubatch_size, "seconds": round(res.seconds, 3),
            })
            ckpt.save(state)
            if old and old != name:
                ckpt.clean(keep={name})
            val = f", val loss {res.val_loss:.4f}" if math.isfinite(res.val_loss) else ""
            rep.message(f"{PROG}: checkpoint {state.done}/{n_units}: train loss {res.train_loss:.4f}{val} "
                        f"({res.steps} steps, {res.seconds:.1f} s) -> {ckpt.path / name}")
            done_now += 1
            if args.stop_after is not None and done_now >= args.stop_after and state.done < n_units:
                rep.message(f"{PROG}: stopping after {done_now} checkpoint(s) (--stop-after); "
                            "rerun with --resume to continue")
                return 0
    except _Interrupted:
        rep.message(f"{PROG}: interrupted; {state.done} of {n_units} unit(s) are checkpointed in {ckpt.path}; "
                    "rerun with --resume to continue")
        return 130
    finally:
        for f in jsonl_files:
            f.close()
        raw_log.close()

    # -- output ------------------------------------------------------------------------------------------
    final = ckpt.path / state.model
    atomic_copy(final, output)
    state.finished = True
    ckpt.save(state)
    if not args.keep_checkpoints:
        ckpt.clean(keep=set())
        shutil.rmtree(ckpt.path / "data", ignore_errors=True)
    first, last = state.history[0]["train_loss"], state.history[-1]["train_loss"]
    out.write(f"{PROG}: wrote {output} (train loss {first:.4f} -> {last:.4f} over {n_units} unit(s))\n")
    return 0


def main() -> None:
    sys.exit(run())

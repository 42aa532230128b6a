#!/usr/bin/env python3
"""llama-tq upstream manager: pinned llama.cpp source + our patch series.

Standard library only (Python >= 3.11). The upstream source is never committed: `prepare` fetches the
archive named by the pin file (vendor/llama.cpp.toml), verifies its sha256, extracts the llama.cpp
subtree into a gitignored work tree (.upstream/llama.cpp), turns it into a git repository whose first
commit is the pristine upstream (tag `pristine`, deterministic hash) and applies patches/series with
`git am` (strict: exact context, no 3-way).

Developer workflow:
    python tools/upstream.py prepare          # tree = pristine + patches/series
    cd .upstream/llama.cpp && edit && git commit   # subject: what; body: why
    python tools/upstream.py export           # commits pristine..HEAD -> patches/*.patch + series
    python tools/upstream.py lint && python tools/upstream.py check

Archive lookup order: $LLAMA_TQ_SOURCE (the archive, or a directory holding it), then the cache
($LLAMA_TQ_CACHE, default ~/.cache/llama-tq), then `pip download` into the cache. $LLAMA_TQ_PIP
replaces the `python -m pip` prefix of that command (tests, unusual setups).

Series hash (`hash`): sha256 over the bytes of the pin file, then patches/series, then every listed
patch in series order, i.e. `cat vendor/llama.cpp.toml patches/series <patches...> | sha256sum`.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from email.header import decode_header, make_header
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PIN = REPO / "vendor" / "llama.cpp.toml"
DEFAULT_PATCHES = REPO / "patches"
DEFAULT_TREE = REPO / ".upstream" / "llama.cpp"

ENV_SOURCE = "LLAMA_TQ_SOURCE"
ENV_CACHE = "LLAMA_TQ_CACHE"
ENV_PIP = "LLAMA_TQ_PIP"

STAMP_NAME = ".llama-tq-stamp"  # JSON; CMakeLists.txt reads its series_hash
PRISTINE_TAG = "pristine"
BRANCH = "llama-tq"
IDENT_NAME = "llama-tq"
IDENT_EMAIL = "llama-tq@localhost"
FIXED_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: pristine commit and `git am` committer date
FIXED_DATE = f"@{FIXED_EPOCH} +0000"
PIP_TIMEOUT_S = 900

REQUIRED_PIN_KEYS = {
    "source": ("package", "version", "filename", "sha256", "strip_prefix"),
    "upstream": ("repository", "commit"),
}
PATCH_NAME_RE = re.compile(r"^[0-9]{4}-[A-Za-z0-9._+-]+\.patch$")
ZERO_FROM = "From 0000000000000000000000000000000000000000 "

# `git format-patch` flags chosen for byte-stable output: zero commit ids, no version signature, full
# blob ids (abbreviations grow with the repository), no [PATCH n/m] numbering (adding a patch must
# not rewrite the others), explicit diff algorithm and no rename detection.
FORMAT_PATCH_ARGS = (
    "format-patch",
    "--zero-commit",
    "--no-signature",
    "--full-index",
    "--no-numbered",
    "--no-renames",
    "--diff-algorithm=myers",
    "--no-thread",
    "--no-cover-letter",
    "--no-notes",
    "--start-number=1",
)
AM_ARGS = (
    "am",
    "--no-3way",
    "--keep-cr",
    "--no-scissors",
    "--no-message-id",
    "--no-signoff",
    "--quiet",
)

# pack: what the GPU machine does not need (paths relative to the tree root)
PACK_DROP_TOP = {
    ".github",
    ".devops",
    ".gemini",
    ".pi",
    ".git",
    "docs",
    "media",
    "benches",
    "skills",
    "ci",
    "build-xcframework.sh",
}
PACK_KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda", "ggml-blas"}
PACK_DROP_MEDIA = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".ico", ".mp3", ".mp4", ".wav")  # test assets
PACK_KEEP_MODELS = re.compile(
    r"^models/(ggml-vocab-llama-spm\.gguf(\.inp|\.out)?|templates/.*|\.editorconfig)$"
)


class UpstreamError(Exception):
    """A failure to report to the user (exit status 1)."""


class PatchError(UpstreamError):
    pass


# --------------------------------------------------------------------------------------------------
# logging and timing


class Log:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, name: str):
        t = time.monotonic()
        yield
        self.info(f"  {name:<28} {time.monotonic() - t:7.2f} s")

    def total(self, what: str) -> None:
        self.info(f"{what}: {time.monotonic() - self.t0:.2f} s total")


# --------------------------------------------------------------------------------------------------
# context: paths


class Ctx:
    def __init__(self, pin: Path, patches: Path, tree: Path, cache: Path, log: Log) -> None:
        self.pin_path = pin
        self.patches = patches
        self.tree = tree
        self.cache = cache
        self.log = log
        self._pin: dict | None = None

    @property
    def pin(self) -> dict:
        if self._pin is None:
            pin, problems = load_pin(self.pin_path)
            if problems:
                raise UpstreamError(f"bad pin file {self.pin_path}:\n  " + "\n  ".join(problems))
            self._pin = pin
        return self._pin


def load_pin(path: Path) -> tuple[dict, list[str]]:
    try:
        with open(path, "rb") as f:
            pin = tomllib.load(f)
    except FileNotFoundError:
        return {}, [f"{path}: not found"]
    except tomllib.TOMLDecodeError as e:
        return {}, [f"{path}: invalid TOML: {e}"]
    problems = []
    for table, keys in REQUIRED_PIN_KEYS.items():
        t = pin.get(table)
        if not isinstance(t, dict):
            problems.append(f"missing table [{table}]")
            continue
        for k in keys:
            v = t.get(k)
            if not isinstance(v, str) or not v.strip():
                problems.append(f"[{table}] {k}: missing or not a non-empty string")
    src = pin.get("source") if isinstance(pin.get("source"), dict) else {}
    sha = src.get("sha256")
    if isinstance(sha, str) and not re.fullmatch(r"[0-9a-f]{64}", sha):
        problems.append("[source] sha256: must be 64 lowercase hex digits")
    sp = src.get("strip_prefix")
    if isinstance(sp, str) and (sp.startswith("/") or ".." in sp.split("/")):
        problems.append("[source] strip_prefix: must be a relative path without '..'")
    fn = src.get("filename")
    if isinstance(fn, str) and ("/" in fn or "\\" in fn):
        problems.append("[source] filename: must be a bare file name")
    build = pin.get("upstream", {}).get("build") if isinstance(pin.get("upstream"), dict) else None
    if build is not None and not isinstance(build, int):
        problems.append("[upstream] build: must be an integer")
    return pin, problems


# --------------------------------------------------------------------------------------------------
# series and hash


def read_series(patches: Path) -> list[str]:
    """Entries of patches/series: one file name a line; blank lines and '#' comments ignored."""
    series = patches / "series"
    if not series.is_file():
        return []
    out = []
    for line in series.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def series_hash(pin_path: Path, patches: Path) -> str:
    h = hashlib.sha256()
    h.update(pin_path.read_bytes())
    series = patches / "series"
    if series.is_file():
        h.update(series.read_bytes())
        for name in read_series(patches):
            p = patches / name
            if not p.is_file():
                raise UpstreamError(f"{series}: lists {name}, which does not exist (run lint)")
            h.update(p.read_bytes())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# git with a controlled environment


def git_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        PAGER="cat",
        GIT_AUTHOR_NAME=IDENT_NAME,
        GIT_AUTHOR_EMAIL=IDENT_EMAIL,
        GIT_COMMITTER_NAME=IDENT_NAME,
        GIT_COMMITTER_EMAIL=IDENT_EMAIL,
        GIT_AUTHOR_DATE=FIXED_DATE,
        GIT_COMMITTER_DATE=FIXED_DATE,
        LC_ALL="C",
        LANGUAGE="C",
        TZ="UTC",
    )
    return env


def git(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(
            ["git", "-C", str(tree), *args],
            env=git_env(),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise UpstreamError("git is not installed (needed to manage the upstream work tree)") from None
    if check and r.returncode != 0:
        raise UpstreamError(f"git {' '.join(args[:2])} failed in {tree}:\n{(r.stderr or r.stdout).strip()}")
    return r


def git_out(tree: Path, *args: str) -> str:
    return git(tree, *args).stdout.strip()


def is_repo(tree: Path) -> bool:
    return (tree / ".git").is_dir()


def rev_ok(tree: Path, rev: str) -> bool:
    return git(tree, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).returncode == 0


def dirty_lines(tree: Path) -> list[str]:
    out = git(tree, "status", "--porcelain=v1", "--untracked-files=normal").stdout
    return [line for line in out.splitlines() if line.strip()]


def op_in_progress(tree: Path) -> str | None:
    gd = tree / ".git"
    for name, what in (
        ("rebase-apply", "git am/rebase"),
        ("rebase-merge", "git rebase"),
        ("MERGE_HEAD", "git merge"),
        ("CHERRY_PICK_HEAD", "git cherry-pick"),
    ):
        if (gd / name).exists():
            return what
    return None


# --------------------------------------------------------------------------------------------------
# stamp


def read_stamp(tree: Path) -> dict | None:
    try:
        return json.loads((tree / STAMP_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def write_stamp(tree: Path, **data) -> None:
    p = tree / STAMP_NAME
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def unexported_base(tree: Path, stamp: dict | None) -> str:
    """The commit the patches/ directory corresponds to (commits above it are not exported)."""
    head = (stamp or {}).get("head")
    if head and rev_ok(tree, head):
        return head
    return PRISTINE_TAG


def count_unexported(tree: Path, stamp: dict | None) -> int:
    if not rev_ok(tree, PRISTINE_TAG):
        return 0
    base = unexported_base(tree, stamp)
    return int(git_out(tree, "rev-list", "--count", f"{base}..HEAD") or 0)


# --------------------------------------------------------------------------------------------------
# archive


def mismatch_msg(path: Path, expected: str, got: str) -> str:
    return f"sha256 mismatch for {path}\n  expected: {expected}\n  got:      {got}"


def obtain_archive(ctx: Ctx) -> Path:
    src = ctx.pin["source"]
    fname, expected = src["filename"], src["sha256"]
    env_src = os.environ.get(ENV_SOURCE)
    if env_src:
        p = Path(env_src).expanduser()
        if p.is_dir():
            p = p / fname
        if not p.is_file():
            raise UpstreamError(f"{ENV_SOURCE}={env_src}: no archive file {fname} there")
        with ctx.log.step("sha256 (LLAMA_TQ_SOURCE)"):
            got = sha256_file(p)
        if got != expected:
            raise UpstreamError(
                mismatch_msg(p, expected, got) + f"\nrefusing to use it ({ENV_SOURCE}); nothing was deleted"
            )
        return p
    cached = ctx.cache / fname
    if cached.is_file():
        with ctx.log.step("sha256 (cache)"):
            got = sha256_file(cached)
        if got == expected:
            return cached
        ctx.log.warn(
            mismatch_msg(cached, expected, got) + "\ncorrupt cached archive removed; downloading again"
        )
        cached.unlink()
    with ctx.log.step("pip download"):
        got_path = pip_download(ctx)
    got = sha256_file(got_path)
    if got != expected:
        got_path.unlink()
        raise UpstreamError(
            mismatch_msg(got_path, expected, got)
            + "\nrefusing the downloaded archive (removed from the cache)"
        )
    return got_path


def pip_download(ctx: Ctx) -> Path:
    src = ctx.pin["source"]
    fname, package, version = src["filename"], src["package"], src["version"]
    prefix = shlex.split(os.environ[ENV_PIP]) if os.environ.get(ENV_PIP) else [sys.executable, "-m", "pip"]
    ctx.cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=ctx.cache))
    base = [*prefix, "download", "--no-deps", "--no-binary", package]
    spec = [f"{package}=={version}", "-d", str(tmp)]
    attempts = [base + ["--no-build-isolation"] + spec, base + spec]
    tails = []
    try:
        for cmd in attempts:
            ctx.log.info("  $ " + shlex.join(cmd))
            try:
                r = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=PIP_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                )
                rc, out = r.returncode, (r.stdout + r.stderr)
            except FileNotFoundError as e:
                rc, out = 127, str(e)
            except subprocess.TimeoutExpired:
                rc, out = 124, f"timed out after {PIP_TIMEOUT_S} s"
            if rc == 0 and (tmp / fname).is_file():
                dest = ctx.cache / fname
                os.replace(tmp / fname, dest)
                return dest
            if rc == 0:
                out += f"\n(pip succeeded but did not produce {fname}; got: {sorted(os.listdir(tmp))})"
            tails.append(f"$ {shlex.join(cmd)}\n  (exit {rc}) " + "\n  ".join(out.strip().splitlines()[-6:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raise UpstreamError(
        f"could not download {package}=={version} with pip:\n"
        + "\n".join(tails)
        + f"\nOn a machine without network, set {ENV_SOURCE} to the archive {fname} (sha256 {src['sha256']})"
        f" or to a directory holding it, or put it in the cache {ctx.cache}."
    )


def extract_subtree(archive: Path, prefix: str, dest: Path) -> tuple[int, list[str]]:
    """Extract the members under `prefix` into dest (streaming, one pass). Returns (files, skipped)."""
    prefix = posixpath.normpath(prefix.strip("/"))
    n, skipped = 0, []
    with tarfile.open(archive, "r|*") as tf:
        for m in tf:
            name = posixpath.normpath(m.name.lstrip("/"))
            if not name.startswith(prefix + "/"):
                continue
            rel = name[len(prefix) + 1 :]
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise UpstreamError(f"unsafe path in archive: {m.name}")
            if parts[0] == ".git":  # the sdist carries a submodule gitlink file; not upstream content
                skipped.append(rel)
                continue
            target = dest.joinpath(*parts)
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as fsrc, open(target, "wb") as fdst:
                    shutil.copyfileobj(fsrc, fdst, 1 << 20)
                os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)
                n += 1
            elif m.issym():
                link = posixpath.normpath(posixpath.join(posixpath.dirname(rel), m.linkname))
                if m.linkname.startswith("/") or link.startswith(".."):
                    raise UpstreamError(f"symlink leaves the tree: {m.name} -> {m.linkname}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(m.linkname, target)
                n += 1
            else:
                raise UpstreamError(f"unsupported archive member type {m.type!r}: {m.name}")
    if n == 0:
        raise UpstreamError(f"{archive} holds nothing under {prefix}/ (check strip_prefix in the pin)")
    return n, skipped


# --------------------------------------------------------------------------------------------------
# building the work tree


def _rmtree(path: Path) -> None:
    def onerror(func, p, _exc):
        os.chmod(p, 0o700)
        func(p)

    shutil.rmtree(path, onerror=onerror)


def pristine_message(pin: dict) -> str:
    src, up = pin["source"], pin.get("upstream", {})
    build = f" (build {up['build']})" if "build" in up else ""
    return (
        f"llama.cpp pristine: {up.get('repository', '?')}@{up.get('commit', '?')}{build}\n\n"
        f"Extracted by tools/upstream.py from {src['filename']}\n"
        f"({src['package']} {src['version']}, sha256 {src['sha256']}),\n"
        f"subtree {src['strip_prefix']}.\n"
    )


def apply_patch(ctx: Ctx, tree: Path, name: str) -> None:
    path = (ctx.patches / name).resolve()
    r = git(tree, *AM_ARGS, str(path), check=False)
    if r.returncode == 0:
        return
    text = (r.stderr + "\n" + r.stdout).strip()
    failed = re.findall(r"^error: patch failed: (.+):(\d+)$", text, re.M)
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    git(tree, "am", "--abort", check=False)
    where = ", ".join(f"{f} (hunk at line {ln})" for f, ln in failed) or "see git's errors below"
    raise PatchError(
        f"patch {ctx.patches / name} does not apply: {where}\n  "
        + "\n  ".join(errors or text.splitlines()[-8:])
    )


def build_tree(ctx: Ctx, dest: Path, archive: Path, cur_hash: str) -> None:
    log, pin = ctx.log, ctx.pin
    with log.step("extract"):
        n, skipped = extract_subtree(archive, pin["source"]["strip_prefix"], dest)
    log.info(f"  ({n} files" + (f"; skipped {', '.join(skipped)}" if skipped else "") + ")")
    with log.step("git init + pristine commit"):
        git(dest, "init", "--quiet")
        git(dest, "symbolic-ref", "HEAD", f"refs/heads/{BRANCH}")
        for k, v in (
            ("core.autocrlf", "false"),
            ("core.fileMode", "true"),
            ("core.safecrlf", "false"),
            ("gc.auto", "0"),
            ("commit.gpgSign", "false"),
            ("tag.gpgSign", "false"),
            ("am.threeWay", "false"),
            ("core.quotePath", "true"),
        ):
            git(dest, "config", k, v)
        with open(dest / ".git" / "info" / "exclude", "a", encoding="utf-8") as f:
            f.write(f"/{STAMP_NAME}\n/{STAMP_NAME}.tmp\n")
        git(dest, "add", "--all", "--force", "--", ".")
        git(dest, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", pristine_message(pin))
        git(dest, "tag", PRISTINE_TAG)
    pristine = git_out(dest, "rev-parse", "HEAD")
    stamp = dict(
        series_hash=None, head=pristine, pristine=pristine, pin_sha256=pin["source"]["sha256"], patches=[]
    )
    write_stamp(dest, **stamp)
    series = read_series(ctx.patches)
    with log.step(f"git am ({len(series)} patches)"):
        for i, name in enumerate(series):
            try:
                apply_patch(ctx, dest, name)
            except PatchError:
                stamp["incomplete"] = {"failed": name, "remaining": series[i + 1 :]}
                write_stamp(dest, **stamp)
                raise
            stamp["head"] = git_out(dest, "rev-parse", "HEAD")
            stamp["patches"].append(name)
            write_stamp(dest, **stamp)
    stamp["series_hash"] = cur_hash
    write_stamp(dest, **stamp)


@contextlib.contextmanager
def tree_lock(tree: Path):
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    tree.parent.mkdir(parents=True, exist_ok=True)
    with open(tree.parent / f".{tree.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def swap_into_place(new: Path, tree: Path, background_delete: bool = True) -> None:
    old = None
    if tree.exists() or tree.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{tree.name}.old-", dir=tree.parent))
        os.rename(tree, old / "tree")
    os.rename(new, tree)
    if old is None:
        return
    # Deleting ~250 MB right after writing as much can stall for half a minute on a busy disk: let a
    # detached process do it (leftovers are swept by the next prepare).
    if background_delete:
        with contextlib.suppress(OSError):
            code = "import shutil, sys; shutil.rmtree(sys.argv[1], ignore_errors=True)"
            subprocess.Popen(
                [sys.executable, "-c", code, str(old)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            return
    _rmtree(old)


def sweep_leftovers(tree: Path) -> None:
    """Remove scratch dirs of interrupted prepares (callers hold the tree lock)."""
    if tree.parent.is_dir():
        for p in tree.parent.glob(f".{tree.name}.new-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in tree.parent.glob(f".{tree.name}.old-*"):  # a background delete that never finished
            with contextlib.suppress(OSError):
                if time.time() - p.stat().st_mtime > 3600:
                    shutil.rmtree(p, ignore_errors=True)


def prepare(ctx: Ctx, force: bool = False, scratch: bool = False) -> Path:
    """Make ctx.tree = pristine + series. scratch: a throw-away tree (check), never left half-patched."""
    log, tree = ctx.log, ctx.tree
    cur_hash = series_hash(ctx.pin_path, ctx.patches)
    _ = ctx.pin  # validate early
    if tree.exists():
        repo = is_repo(tree)
        stamp = read_stamp(tree)
        if not repo and not force and stamp and stamp.get("packed") and stamp.get("series_hash") == cur_hash:
            log.info(f"up to date: {tree} (unpacked from `pack`, series {cur_hash[:16]}; no git)")
            return tree
        if repo and not force and stamp and stamp.get("series_hash") == cur_hash:
            n = count_unexported(tree, stamp)
            if n:
                log.warn(f"{n} commit(s) in {tree} not exported; run `python tools/upstream.py export`")
            head = stamp.get("head") or PRISTINE_TAG
            if git(tree, "merge-base", "--is-ancestor", head, "HEAD", check=False).returncode:
                log.warn(
                    f"HEAD of {tree} no longer contains the series (reset/rebased); run `export` to save"
                    " that state, or `prepare --force` to restore the series"
                )
            if dirty_lines(tree):
                log.warn(f"{tree} has uncommitted changes")
            log.info(f"up to date: {tree} (series {cur_hash[:16]})")
            return tree
        if not force:
            reasons = []
            if not repo:
                what = (
                    "an unpacked `pack` of another series" if stamp else "not a work tree made by this tool"
                )
                reasons.append(f"{tree} exists but is {what} (no .git)")
            else:
                if op_in_progress(tree):
                    reasons.append(f"a {op_in_progress(tree)} is in progress")
                dirty = dirty_lines(tree)
                if dirty:
                    reasons.append(f"{len(dirty)} uncommitted change(s), e.g. {dirty[0].strip()}")
                n = count_unexported(tree, stamp)
                if n:
                    reasons.append(f"{n} commit(s) not exported to {ctx.patches}")
            if reasons:
                raise UpstreamError(
                    ("the patch series or pin changed" if stamp else f"{tree} has no {STAMP_NAME}")
                    + f", so {tree} must be rebuilt, but: "
                    + "; ".join(reasons)
                    + ".\nRun `python tools/upstream.py export` to save your commits into patches/ first, or"
                    " `python tools/upstream.py prepare --force` to discard them."
                )
        log.info(f"rebuilding {tree} (series {cur_hash[:16]})")
    else:
        log.info(f"creating {tree} (series {cur_hash[:16]})")
    archive = obtain_archive(ctx)
    tree.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(tree)
    new = Path(tempfile.mkdtemp(prefix=f".{tree.name}.new-", dir=tree.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)  # mkdtemp makes it 0700
    try:
        build_tree(ctx, new, archive, cur_hash)
    except PatchError as e:
        if scratch:
            _rmtree(new)
            raise
        # Leave the partly patched tree in place so the failing patch can be repaired by hand.
        swap_into_place(new, tree)
        raise PatchError(
            f"{e}\nThe tree {tree} now holds pristine + the patches before it (git am was aborted):"
            " repair the change there (e.g. `git apply --reject` the patch, fix, `git commit`), `git am`"
            " the remaining patches, then run `python tools/upstream.py export --force`."
        ) from None
    except BaseException:
        _rmtree(new)
        raise
    with log.step("swap into place"):
        swap_into_place(new, tree)
    stamp = read_stamp(tree) or {}
    log.info(
        f"prepared {tree}: pristine {stamp.get('pristine', '?')[:12]} + {len(stamp.get('patches', []))}"
        f" patch(es), HEAD {stamp.get('head', '?')[:12]}"
    )
    return tree


# --------------------------------------------------------------------------------------------------
# export / check


def format_patches(tree: Path, out_dir: Path) -> list[str]:
    if not rev_ok(tree, PRISTINE_TAG):
        raise UpstreamError(f"{tree} has no `{PRISTINE_TAG}` tag; run `python tools/upstream.py prepare`")
    if git(tree, "merge-base", "--is-ancestor", PRISTINE_TAG, "HEAD", check=False).returncode != 0:
        raise UpstreamError(f"HEAD of {tree} does not descend from `{PRISTINE_TAG}`")
    merges = git_out(tree, "rev-list", "--merges", f"{PRISTINE_TAG}..HEAD")
    if merges:
        raise UpstreamError(
            f"merge commits in {PRISTINE_TAG}..HEAD cannot be exported: {merges.split()[0][:12]}"
        )
    empty = [
        c
        for c in git_out(tree, "rev-list", "--reverse", f"{PRISTINE_TAG}..HEAD").split()
        if not git_out(tree, "diff-tree", "--no-commit-id", "--name-only", "-r", c)
    ]
    if empty:
        raise UpstreamError(f"empty commit {empty[0][:12]} in {PRISTINE_TAG}..HEAD; drop it (git rebase -i)")
    out = git_out(tree, *FORMAT_PATCH_ARGS, "-o", str(out_dir), f"{PRISTINE_TAG}..HEAD")
    return [Path(line).name for line in out.splitlines() if line.strip()]


def series_text(names: list[str]) -> str:
    return "".join(f"{n}\n" for n in names)


def export(ctx: Ctx, force: bool = False) -> None:
    log, tree = ctx.log, ctx.tree
    if not is_repo(tree):
        raise UpstreamError(f"no work tree at {tree}; run `python tools/upstream.py prepare`")
    what = op_in_progress(tree)
    if what:
        raise UpstreamError(f"a {what} is in progress in {tree}; finish or abort it first")
    dirty = dirty_lines(tree)
    if dirty:
        raise UpstreamError(
            f"{tree} has uncommitted changes; commit (or stash) them before export:\n  "
            + "\n  ".join(dirty[:10])
        )
    stamp = read_stamp(tree) or {}
    inc = stamp.get("incomplete")
    if inc and not force:
        raise UpstreamError(
            f"{tree} holds a partly applied series: prepare stopped at {inc.get('failed')}, and export"
            f" would drop it and the {len(inc.get('remaining', []))} patch(es) after it from patches/"
            f" ({', '.join(inc.get('remaining', [])) or 'none'}). Repair it, `git am` the rest, then run"
            " `export --force`."
        )
    stamp.pop("incomplete", None)
    pin_sha = ctx.pin["source"]["sha256"]
    if stamp.get("pin_sha256") not in (None, pin_sha):
        raise UpstreamError(f"{tree} was built from another upstream archive than the pin names; run prepare")
    with tempfile.TemporaryDirectory(prefix="llama-tq-export-") as tmp:
        with log.step("git format-patch"):
            names = format_patches(tree, Path(tmp))
        ctx.patches.mkdir(parents=True, exist_ok=True)
        changed, added = [], []
        for n in names:
            data = (Path(tmp) / n).read_bytes()
            dest = ctx.patches / n
            if dest.is_file():
                if dest.read_bytes() != data:
                    dest.write_bytes(data)
                    changed.append(n)
            else:
                dest.write_bytes(data)
                added.append(n)
    removed = sorted(p.name for p in ctx.patches.glob("*.patch") if p.name not in names)
    for n in removed:
        (ctx.patches / n).unlink()
    series = ctx.patches / "series"
    text = series_text(names)
    if not series.is_file() or series.read_text(encoding="utf-8") != text:
        series.write_text(text, encoding="utf-8")
    new_hash = series_hash(ctx.pin_path, ctx.patches)
    stamp.update(series_hash=new_hash, head=git_out(tree, "rev-parse", "HEAD"), patches=names)
    write_stamp(tree, **stamp)
    log.info(
        f"exported {len(names)} patch(es) to {ctx.patches}: {len(added)} added, {len(changed)} changed,"
        f" {len(removed)} removed"
        + "".join(f"\n  + {n}" for n in added)
        + "".join(f"\n  ~ {n}" for n in changed)
        + "".join(f"\n  - {n}" for n in removed)
    )
    log.info(f"series hash {new_hash}")


def patch_files(d: Path) -> dict[str, bytes]:
    out = {p.name: p.read_bytes() for p in d.glob("*.patch")}
    if (d / "series").is_file():
        out["series"] = (d / "series").read_bytes()
    return out


def check(ctx: Ctx, keep: bool = False) -> int:
    log = ctx.log
    tmp = Path(tempfile.mkdtemp(prefix="llama-tq-check-"))
    try:
        sub = Ctx(ctx.pin_path, ctx.patches, tmp / "llama.cpp", ctx.cache, log)
        prepare(sub, force=True, scratch=True)
        (tmp / "patches").mkdir()
        with log.step("git format-patch"):
            names = format_patches(sub.tree, tmp / "patches")
        (tmp / "patches" / "series").write_text(series_text(names), encoding="utf-8")
        want, got = patch_files(ctx.patches), patch_files(tmp / "patches")
        problems = []
        for n in sorted(set(want) | set(got)):
            if n not in got:
                problems.append(f"- {n}: in {ctx.patches} but not produced by re-export")
            elif n not in want:
                problems.append(f"+ {n}: produced by re-export but missing from {ctx.patches}")
            elif want[n] != got[n]:
                diff = list(
                    difflib.unified_diff(
                        want[n].decode("utf-8", "replace").splitlines(),
                        got[n].decode("utf-8", "replace").splitlines(),
                        f"patches/{n}",
                        f"re-exported/{n}",
                        lineterm="",
                        n=1,
                    )
                )
                problems.append(f"~ {n}: differs ({len(diff)} diff lines)\n    " + "\n    ".join(diff[:30]))
        if problems:
            print(f"check FAILED: re-export of {ctx.patches} is not byte-identical:\n" + "\n".join(problems))
            return 1
        print(
            f"check OK: {len(names)} patch(es) re-export byte-identically"
            f" (series {series_hash(ctx.pin_path, ctx.patches)})"
        )
        return 0
    finally:
        if keep:
            log.info(f"kept {tmp}")
        else:
            _rmtree(tmp)


# --------------------------------------------------------------------------------------------------
# lint


def _decode_subject(raw: str) -> str:
    try:
        return str(make_header(decode_header(raw)))
    except Exception:  # malformed encoded words: judge the raw text
        return raw


def _path_problems(path: str, kind: str) -> list[str]:
    if path == "/dev/null":
        return []
    if path.startswith('"'):
        path = path.strip('"')
    if kind in ("a", "b"):
        if not path.startswith(f"{kind}/"):
            return [f"path {path!r} lacks the {kind}/ prefix"]
        path = path[2:]
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        return [f"path {path!r} leaves the upstream tree"]
    if parts[0] == ".git":
        return [f"path {path!r} is inside .git"]
    return []


def lint_patch(name: str, data: bytes) -> list[str]:
    problems = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ["not valid UTF-8"]
    lines = text.split("\n")
    if not lines[0].startswith(ZERO_FROM):
        problems.append("does not start with a `From 000...` line (not written by `upstream.py export`)")
    # headers
    i, headers = 1, {}
    last = None
    while i < len(lines) and lines[i] != "":
        line = lines[i]
        if line[:1] in (" ", "\t") and last:
            headers[last] += " " + line.strip()
        elif ":" in line:
            last = line.split(":", 1)[0].lower()
            headers[last] = line.split(":", 1)[1].strip()
        i += 1
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", _decode_subject(headers.get("subject", ""))).strip()
    if not subject:
        problems.append("no subject")
    elif subject.startswith("["):
        problems.append("subject starts with '[' (git am would strip it)")
    # message body: up to the '---' line that precedes the diffstat / diff
    body, i = [], i + 1
    while i < len(lines) and lines[i] != "---" and not lines[i].startswith("diff --git "):
        body.append(lines[i])
        i += 1
    paragraphs = [p for p in "\n".join(body).split("\n\n") if p.strip()]
    trailer = re.compile(r"^[A-Za-z0-9-]+: .*$")
    if paragraphs and all(trailer.match(ln) for ln in paragraphs[-1].strip().splitlines()):
        paragraphs.pop()
    if not paragraphs:
        problems.append(
            "no body: say what the patch changes and why, in at least one paragraph after the subject"
        )
    # diff: hunk-aware walk over the file headers
    ndiff, binary = 0, False
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("diff --git "):
            ndiff, binary = ndiff + 1, False
            rest = line[len("diff --git ") :]
            if not rest.startswith(("a/", '"a/')):
                problems.append(f"unexpected diff header: {line}")
            elif not rest.startswith('"') and len(rest) % 2 == 1:
                half = (len(rest) - 1) // 2
                if rest[half] == " " and rest[2:half] == rest[half + 3 :]:
                    problems += _path_problems(rest[:half], "a")
            continue
        if binary:
            continue
        if line.startswith("GIT binary patch"):
            binary = True
        elif line.startswith("--- "):
            problems += _path_problems(line[4:].split("\t")[0], "a")
        elif line.startswith("+++ "):
            problems += _path_problems(line[4:].split("\t")[0], "b")
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            problems += _path_problems(line.split(" ", 2)[2], "")
        elif line.startswith("@@ "):
            m = re.match(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", line)
            if not m:
                problems.append(f"bad hunk header: {line}")
                continue
            old = int(m.group(1) if m.group(1) is not None else 1)
            new = int(m.group(2) if m.group(2) is not None else 1)
            while (old > 0 or new > 0) and i < len(lines):
                h = lines[i]
                i += 1
                if h.startswith("\\"):
                    continue
                if h.startswith("-"):
                    old -= 1
                elif h.startswith("+"):
                    new -= 1
                else:
                    old, new = old - 1, new - 1
    if ndiff == 0:
        problems.append("changes no file (no `diff --git` section)")
    return sorted(set(problems), key=problems.index)


def lint(ctx: Ctx) -> list[str]:
    problems = []
    _, pin_problems = load_pin(ctx.pin_path)
    problems += [f"{ctx.pin_path.name}: {p}" for p in pin_problems]
    series_path = ctx.patches / "series"
    files = sorted(p.name for p in ctx.patches.glob("*.patch")) if ctx.patches.is_dir() else []
    if not series_path.is_file():
        if files:
            problems.append(f"{series_path} missing but {len(files)} .patch file(s) exist")
        entries = []
    else:
        entries = read_series(ctx.patches)
    seen = set()
    for e in entries:
        if e in seen:
            problems.append(f"series: {e} listed twice")
        seen.add(e)
        if not PATCH_NAME_RE.match(e):
            problems.append(f"series: {e}: name must look like NNNN-subject.patch")
        if not (ctx.patches / e).is_file():
            problems.append(f"series: {e}: no such file")
    for f in files:
        if f not in seen:
            problems.append(f"{f}: not listed in series")
    for e in dict.fromkeys(entries):
        p = ctx.patches / e
        if p.is_file():
            problems += [f"{e}: {msg}" for msg in lint_patch(e, p.read_bytes())]
    return problems


# --------------------------------------------------------------------------------------------------
# pack


def _examples_kept(tree: Path) -> set[str]:
    """examples/ dirs that examples/CMakeLists.txt adds (so LLAMA_BUILD_EXAMPLES=ON still configures)."""
    cm = tree / "examples" / "CMakeLists.txt"
    names = {"training"}
    if cm.is_file():
        names |= set(
            re.findall(r"add_subdirectory\(\s*([A-Za-z0-9_.+-]+)\s*\)", cm.read_text(errors="replace"))
        )
    return names


def pack_keep(rel: str, examples: set[str]) -> bool:
    parts = rel.split("/")
    top = parts[0]
    if top in PACK_DROP_TOP:
        return False
    if top == "models":
        return bool(PACK_KEEP_MODELS.match(rel))
    if top == "examples" and len(parts) > 1:
        return len(parts) > 2 and parts[1] in examples or rel == "examples/CMakeLists.txt"
    if rel.startswith("tools/ui/"):
        # only what tools/ui/CMakeLists.txt reads; the web sources and node tests are not built here
        return len(parts) == 3 and parts[2].endswith((".txt", ".cmake", ".in"))
    if rel.startswith("ggml/src/ggml-") and len(parts) > 3:
        return parts[2] in PACK_KEEP_BACKENDS
    return "node_modules" not in parts and not rel.lower().endswith(PACK_DROP_MEDIA)


def pack(ctx: Ctx, out: Path) -> None:
    log = ctx.log
    tree = prepare(ctx)
    stamp = read_stamp(tree) or {}
    n_unexp = count_unexported(tree, stamp)
    dirty = dirty_lines(tree)
    if n_unexp:
        log.warn(f"packing HEAD with {n_unexp} commit(s) not exported to patches/")
    if dirty:
        log.warn(f"{len(dirty)} uncommitted change(s) in {tree} are NOT packed (pack takes HEAD)")
    head = git_out(tree, "rev-parse", "HEAD")
    examples = _examples_kept(tree)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    kept = dropped = 0
    raw = 0
    with log.step("git archive | filter | gzip"):
        proc = subprocess.Popen(
            ["git", "-C", str(tree), "archive", "--format=tar", head], stdout=subprocess.PIPE, env=git_env()
        )
        with (
            open(tmp_out, "wb") as fo,
            gzip.GzipFile(filename="", mode="wb", fileobj=fo, mtime=0, compresslevel=9) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as dst,
            tarfile.open(fileobj=proc.stdout, mode="r|") as src,
        ):
            for m in src:
                if m.type == tarfile.XGLTYPE or not m.name or m.name == "pax_global_header":
                    continue
                rel = m.name.rstrip("/")
                if m.isdir() or not pack_keep(rel, examples):
                    dropped += not m.isdir()
                    continue
                ti = tarfile.TarInfo(f"llama.cpp/{rel}")
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = FIXED_EPOCH, 0, 0, "", ""
                if m.issym():
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, m.linkname, 0o777
                    dst.addfile(ti)
                else:
                    ti.size, ti.mode = m.size, (0o755 if m.mode & 0o111 else 0o644)
                    dst.addfile(ti, src.extractfile(m))
                    raw += m.size
                kept += 1
            info = (
                json.dumps(
                    dict(
                        packed=True,
                        series_hash=stamp.get("series_hash"),
                        head=head,
                        pristine=stamp.get("pristine"),
                        patches=stamp.get("patches", []),
                        unexported_commits=n_unexp,
                        pin_sha256=stamp.get("pin_sha256"),
                    ),
                    indent=2,
                    sort_keys=True,
                ).encode()
                + b"\n"
            )
            ti = tarfile.TarInfo(f"llama.cpp/{STAMP_NAME}")
            ti.size, ti.mode, ti.mtime = len(info), 0o644, FIXED_EPOCH
            dst.addfile(ti, io.BytesIO(info))
        if proc.wait() != 0:
            tmp_out.unlink(missing_ok=True)
            raise UpstreamError("git archive failed")
    os.replace(tmp_out, out)
    size = out.stat().st_size
    log.info(
        f"packed {kept} files ({raw / 2**20:.1f} MiB), dropped {dropped}: {out} = {size / 2**20:.2f} MiB"
    )
    print(out)


# --------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    def common(p: argparse.ArgumentParser, default) -> None:
        p.add_argument(
            "--pin", type=Path, default=default, help=f"pin file (default {DEFAULT_PIN.relative_to(REPO)})"
        )
        p.add_argument("--patches", type=Path, default=default, help="patch directory (default patches/)")
        p.add_argument("--tree", type=Path, default=default, help="work tree (default .upstream/llama.cpp)")
        p.add_argument(
            "--cache",
            type=Path,
            default=default,
            help=f"archive cache (default ${ENV_CACHE} or ~/.cache/llama-tq)",
        )
        p.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=default or False,
            help="print only results, warnings and errors",
        )

    ap = argparse.ArgumentParser(
        prog="upstream.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(ap, None)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    parent = argparse.ArgumentParser(add_help=False)
    common(parent, argparse.SUPPRESS)
    p = sub.add_parser(
        "prepare", parents=[parent], help="fetch, verify, extract, apply the series (idempotent)"
    )
    p.add_argument(
        "--force", action="store_true", help="rebuild even if up to date; discards work in the tree"
    )
    p = sub.add_parser("export", parents=[parent], help="write commits pristine..HEAD to patches/ and series")
    p.add_argument("--force", action="store_true", help="export even a tree whose prepare stopped at a patch")
    p = sub.add_parser(
        "check", parents=[parent], help="prepare a scratch tree and verify re-export is byte-identical"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch tree")
    sub.add_parser("lint", parents=[parent], help="check pin, series and patch headers")
    p = sub.add_parser("pack", parents=[parent], help="tar.gz of the patched tree trimmed for a CUDA build")
    p.add_argument("--out", type=Path, required=True, help="output .tar.gz")
    sub.add_parser("hash", parents=[parent], help="print the series hash")
    sub.add_parser("tree", parents=[parent], help="print the work tree path")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cache = args.cache or Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "llama-tq")
    log = Log(quiet=bool(args.quiet))
    ctx = Ctx(
        (args.pin or DEFAULT_PIN).absolute(),
        (args.patches or DEFAULT_PATCHES).absolute(),
        (args.tree or DEFAULT_TREE).absolute(),
        Path(cache).expanduser().absolute(),
        log,
    )
    try:
        if args.cmd == "hash":
            print(series_hash(ctx.pin_path, ctx.patches))
        elif args.cmd == "tree":
            print(ctx.tree)
        elif args.cmd == "prepare":
            with tree_lock(ctx.tree):
                print(prepare(ctx, force=args.force))
            log.total("prepare")
        elif args.cmd == "export":
            with tree_lock(ctx.tree):
                export(ctx, force=args.force)
            log.total("export")
        elif args.cmd == "check":
            rc = check(ctx, keep=args.keep)
            log.total("check")
            return rc
        elif args.cmd == "lint":
            problems = lint(ctx)
            if problems:
                print(f"lint: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
                return 1
            print(f"lint OK: {len(read_series(ctx.patches))} patch(es)")
        elif args.cmd == "pack":
            with tree_lock(ctx.tree):
                pack(ctx, args.out)
            log.total("pack")
    except UpstreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

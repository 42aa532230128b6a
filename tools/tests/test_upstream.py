"""Hermetic tests for tools/upstream.py: tiny fixture archives, no network, no real llama.cpp."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "upstream.py"
_spec = importlib.util.spec_from_file_location("upstream", TOOL)
up = importlib.util.module_from_spec(_spec)
sys.modules["upstream"] = up
_spec.loader.exec_module(up)

PREFIX = "fixture_pkg-1.0/vendor/llama.cpp"
FILENAME = "fixture_pkg-1.0.tar.gz"

BASE_FILES = {
    "README.md": "# fixture llama.cpp\n",
    ".gitignore": "*.gguf\n/build*\n",
    ".git": "gitdir: ../../.git/modules/vendor/llama.cpp\n",  # submodule gitlink, must be skipped
    "common/build-info.cpp.in": "".join(f"line {i}\n" for i in range(1, 31)),
    "src/llama.cpp": "".join(f"int f{i}() {{ return {i}; }}\n" for i in range(1, 41)),
    "models/ggml-vocab-llama-spm.gguf": "vocab",
    "models/ggml-vocab-big.gguf": "big vocab",
    "docs/guide.md": "docs\n",
    "examples/CMakeLists.txt": "add_subdirectory(simple)\n",
    "examples/simple/simple.cpp": "int main() {}\n",
    "examples/training/train.cpp": "int main() {}\n",
    "examples/llama.android/x.kt": "fun x() {}\n",
    "ggml/src/ggml.c": "/* ggml */\n",
    "ggml/src/ggml-cuda/ggml-cuda.cu": "/* cuda */\n",
    "ggml/src/ggml-vulkan/ggml-vulkan.cpp": "/* vulkan */\n",
    "tools/ui/CMakeLists.txt": "# ui\n",
    "tools/ui/src/app.ts": "x\n",
    "tools/mtmd/test-1.jpeg": "jpeg",
    "scripts/run.sh": "#!/bin/sh\necho hi\n",
}


def make_archive(path: Path, files: dict[str, str]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for rel, text in {**files, "../setup.py": "outside\n"}.items():
            name = f"{PREFIX}/{rel}" if not rel.startswith("../") else f"fixture_pkg-1.0/{rel[3:]}"
            data = text.encode()
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1
            ti.mode = 0o755 if rel.endswith(".sh") else 0o644
            tf.addfile(ti, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def write_pin(path: Path, sha: str, extra: str = "") -> None:
    path.write_text(
        textwrap.dedent(f"""\
        [source]
        package = "fixture-pkg"
        version = "1.0"
        filename = "{FILENAME}"
        sha256 = "{sha}"
        strip_prefix = "{PREFIX}"

        [upstream]
        repository = "example/llama.cpp"
        commit = "abc1234"
        build = 1
        """)
        + extra
    )


def dev_git(tree: Path, *args: str) -> str:
    """git as the developer would run it (identity from the environment)."""
    return subprocess.run(
        ["git", "-C", str(tree), *args], env=up.git_env(), check=True, capture_output=True, text=True
    ).stdout.strip()


class Env:
    def __init__(self, tmp: Path, capsys, monkeypatch) -> None:
        self.tmp, self.capsys, self.mp = tmp, capsys, monkeypatch
        for v in (up.ENV_SOURCE, up.ENV_CACHE, up.ENV_PIP):
            monkeypatch.delenv(v, raising=False)
        self.src = tmp / "src"
        self.src.mkdir()
        self.archive = self.src / FILENAME
        self.sha = make_archive(self.archive, BASE_FILES)
        self.pin = tmp / "pin.toml"
        write_pin(self.pin, self.sha)
        self.patches = tmp / "patches"
        self.patches.mkdir()
        self.tree = tmp / "work" / "llama.cpp"
        self.cache = tmp / "cache"
        monkeypatch.setenv(up.ENV_SOURCE, str(self.src))

    def run(self, *args: str, tree: Path | None = None) -> tuple[int, str, str]:
        rc = up.main(
            [
                args[0],
                "--pin",
                str(self.pin),
                "--patches",
                str(self.patches),
                "--tree",
                str(tree or self.tree),
                "--cache",
                str(self.cache),
                *args[1:],
            ]
        )
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def ok(self, *args: str, **kw) -> tuple[str, str]:
        rc, out, err = self.run(*args, **kw)
        assert rc == 0, f"{args}: rc={rc}\nstdout:\n{out}\nstderr:\n{err}"
        return out, err

    def commit(
        self, rel: str, old: str, new: str, subject: str, body: str = "Because a test needs it."
    ) -> None:
        p = self.tree / rel
        text = p.read_text()
        assert old in text
        p.write_text(text.replace(old, new, 1))
        dev_git(self.tree, "commit", "-q", "-a", "-m", f"{subject}\n\n{body}")

    def make_two_patches(self) -> None:
        self.ok("prepare")
        self.commit("src/llama.cpp", "return 10;", "return 100;", "src: make f10 return 100")
        self.commit(
            "common/build-info.cpp.in", "line 20\n", "line 20\nllama-tq line\n", "common: add a banner line"
        )
        self.ok("export")

    def stamp(self) -> dict:
        return json.loads((self.tree / up.STAMP_NAME).read_text())


@pytest.fixture
def env(tmp_path, capsys, monkeypatch) -> Env:
    return Env(tmp_path, capsys, monkeypatch)


def test_prepare_is_deterministic_and_idempotent(env):
    out, err = env.ok("prepare")
    assert out.strip() == str(env.tree)
    assert "extract" in err and " s" in err  # step timings
    assert not (env.tree / ".git").is_file() and (env.tree / ".git").is_dir()
    assert not (env.tree.parent / "setup.py").exists()
    assert (env.tree / "models/ggml-vocab-big.gguf").is_file()
    assert os.access(env.tree / "scripts/run.sh", os.X_OK)
    pristine = dev_git(env.tree, "rev-parse", "pristine")
    # force-added despite the upstream .gitignore, and the stamp is not reported as untracked
    assert "models/ggml-vocab-big.gguf" in dev_git(env.tree, "ls-files")
    assert dev_git(env.tree, "status", "--porcelain") == ""
    st = env.stamp()
    assert st["series_hash"] == up.series_hash(env.pin, env.patches) and st["head"] == pristine
    out, err = env.ok("prepare")
    assert "up to date" in err
    env.ok("prepare", "--force")
    assert dev_git(env.tree, "rev-parse", "pristine") == pristine
    other = env.tmp / "other" / "llama.cpp"
    env.ok("prepare", tree=other)
    assert dev_git(other, "rev-parse", "HEAD") == pristine


def test_hash_cli(env):
    env.make_two_patches()
    out, _ = env.ok("hash")
    data = env.pin.read_bytes() + (env.patches / "series").read_bytes()
    for name in (env.patches / "series").read_text().split():
        data += (env.patches / name).read_bytes()
    assert out.strip() == hashlib.sha256(data).hexdigest()
    out, _ = env.ok("tree")
    assert out.strip() == str(env.tree)


def test_sha_mismatch_is_refused(env):
    write_pin(env.pin, "0" * 64)
    rc, out, err = env.run("prepare")
    assert rc == 1
    assert f"expected: {'0' * 64}" in err and f"got:      {env.sha}" in err
    assert env.archive.is_file()  # the user's file is never deleted
    assert not env.tree.exists()


def test_corrupt_cache_removed_and_missing_archive_names_env_var(env, monkeypatch):
    monkeypatch.delenv(up.ENV_SOURCE)
    env.cache.mkdir()
    (env.cache / FILENAME).write_bytes(b"corrupt")
    empty = env.tmp / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    rc, out, err = env.run("prepare")
    assert rc == 1
    assert "corrupt cached archive removed" in err
    assert not (env.cache / FILENAME).exists()
    assert "LLAMA_TQ_SOURCE" in err and "fixture-pkg==1.0" in err
    assert "--no-build-isolation" in err  # first attempt, then the fallback without it
    assert not env.tree.exists()


def test_pip_fallback_then_cache_hit(env, monkeypatch):
    monkeypatch.delenv(up.ENV_SOURCE)
    calls = env.tmp / "pip-calls"
    fake = env.tmp / "fakepip.py"
    fake.write_text(
        textwrap.dedent(f"""\
        import shutil, sys
        open({str(calls)!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
        if "--no-build-isolation" in sys.argv:
            sys.exit("pretend the build backend is missing")
        shutil.copy({str(env.archive)!r}, sys.argv[sys.argv.index("-d") + 1])
        """)
    )
    monkeypatch.setenv(up.ENV_PIP, f"{sys.executable} {fake}")
    env.ok("prepare")
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and "--no-build-isolation" in lines[0] and "--no-build-isolation" not in lines[1]
    assert lines[1].startswith("download --no-deps --no-binary fixture-pkg fixture-pkg==1.0 -d ")
    assert (env.cache / FILENAME).is_file()
    env.ok("prepare", "--force")
    assert len(calls.read_text().splitlines()) == 2  # served from the cache


def test_export_check_roundtrip_is_byte_identical(env):
    env.make_two_patches()
    series = (env.patches / "series").read_text().split()
    assert series == ["0001-src-make-f10-return-100.patch", "0002-common-add-a-banner-line.patch"]
    first = {p.name: p.read_bytes() for p in env.patches.iterdir()}
    assert first[series[0]].startswith(up.ZERO_FROM.encode())
    assert b"[PATCH]" in first[series[0]] and b"1/2" not in first[series[0]]
    out, _ = env.ok("check")
    assert "check OK: 2 patch(es)" in out
    # re-export is churn-free
    _, err = env.ok("export")
    assert "0 added, 0 changed, 0 removed" in err
    assert {p.name: p.read_bytes() for p in env.patches.iterdir()} == first
    # the tree rebuilt from the series reproduces the same patches
    env.ok("prepare", "--force")
    env.ok("export")
    assert {p.name: p.read_bytes() for p in env.patches.iterdir()} == first
    env.ok("lint")
    # a hand-edited patch that still applies (diffstat removed) is caught by check
    p = env.patches / series[0]
    text = p.read_text()
    p.write_text(text[: text.index("\n---\n") + 5] + text[text.index("diff --git") :])
    env.ok("prepare")
    rc, out, _ = env.run("check")
    assert rc == 1 and f"~ {series[0]}" in out


def test_export_removes_stale_and_refuses_dirty(env):
    env.make_two_patches()
    (env.tree / "README.md").write_text("dirty\n")
    rc, _, err = env.run("export")
    assert rc == 1 and "uncommitted" in err
    dev_git(env.tree, "checkout", "--", "README.md")
    dev_git(env.tree, "reset", "-q", "--hard", "HEAD~1")
    _, err = env.ok("export")
    assert "1 removed" in err
    assert sorted(p.name for p in env.patches.glob("*.patch")) == ["0001-src-make-f10-return-100.patch"]
    assert (env.patches / "series").read_text() == "0001-src-make-f10-return-100.patch\n"
    assert env.stamp()["series_hash"] == up.series_hash(env.pin, env.patches)


def test_patch_that_no_longer_applies_names_patch_and_file(env):
    env.make_two_patches()
    files = dict(BASE_FILES)
    files["src/llama.cpp"] = files["src/llama.cpp"].replace("return 9;", "return 9000;")
    env.sha = make_archive(env.archive, files)
    write_pin(env.pin, env.sha)
    rc, out, err = env.run("prepare")
    assert rc == 1
    assert "0001-src-make-f10-return-100.patch" in err
    assert "src/llama.cpp" in err and "patch failed" in err
    # the tree is left at pristine (am aborted) for repair
    assert not (env.tree / ".git" / "rebase-apply").exists()
    assert dev_git(env.tree, "rev-parse", "HEAD") == dev_git(env.tree, "rev-parse", "pristine")
    assert env.stamp()["series_hash"] is None
    assert dev_git(env.tree, "status", "--porcelain") == ""
    # repair flow: redo the change by hand, `git am` the rest; export insists on --force
    env.commit("src/llama.cpp", "return 10;", "return 100;", "src: make f10 return 100")
    dev_git(env.tree, "am", str(env.patches / "0002-common-add-a-banner-line.patch"))
    rc, _, err = env.run("export")
    assert rc == 1 and "partly applied" in err and "--force" in err
    _, err = env.ok("export", "--force")
    assert "0 added, 1 changed, 0 removed" in err  # the repaired patch: new context and index lines
    _, err = env.ok("prepare")
    assert "up to date" in err
    out, _ = env.ok("check")
    assert "check OK" in out


def test_stale_tree_is_rebuilt(env):
    env.make_two_patches()
    head = dev_git(env.tree, "rev-parse", "HEAD")
    # the series changes under the tree (e.g. a pull dropped the second patch)
    (env.patches / "0002-common-add-a-banner-line.patch").unlink()
    (env.patches / "series").write_text("0001-src-make-f10-return-100.patch\n")
    _, err = env.ok("prepare")
    assert "rebuilding" in err
    assert dev_git(env.tree, "rev-parse", "HEAD") != head
    assert dev_git(env.tree, "rev-list", "--count", "pristine..HEAD") == "1"
    assert "llama-tq line" not in (env.tree / "common/build-info.cpp.in").read_text()
    assert "return 100;" in (env.tree / "src/llama.cpp").read_text()
    # a pin change alone also rebuilds
    write_pin(env.pin, env.sha, extra="# comment\n")
    _, err = env.ok("prepare")
    assert "rebuilding" in err


def test_unexported_work_blocks_rebuild(env):
    env.make_two_patches()
    env.commit("README.md", "fixture", "FIXTURE", "readme: shout")
    _, err = env.ok("prepare")  # same series: fast path, with a warning
    assert "1 commit(s)" in err and "export" in err and "no longer contains" not in err
    dev_git(env.tree, "reset", "-q", "--hard", "HEAD~2")
    _, err = env.ok("prepare")
    assert "no longer contains the series" in err
    dev_git(env.tree, "reset", "-q", "--hard", "HEAD@{1}")
    write_pin(env.pin, env.sha, extra="# changed\n")
    rc, _, err = env.run("prepare")
    assert rc == 1 and "1 commit(s) not exported" in err and "export" in err and "--force" in err
    assert "FIXTURE" in (env.tree / "README.md").read_text()
    # after export the commit is saved, so the rebuild goes ahead
    env.ok("export")
    write_pin(env.pin, env.sha, extra="# changed again\n")
    env.ok("prepare")
    assert "FIXTURE" in (env.tree / "README.md").read_text()
    # uncommitted changes also block; --force discards them
    (env.tree / "new-file.txt").write_text("wip\n")
    write_pin(env.pin, env.sha)
    rc, _, err = env.run("prepare")
    assert rc == 1 and "uncommitted" in err
    env.ok("prepare", "--force")
    assert not (env.tree / "new-file.txt").exists()


def test_lint(env):
    env.make_two_patches()
    out, _ = env.ok("lint")
    assert "lint OK: 2 patch(es)" in out
    series = env.patches / "series"
    names = series.read_text().split()
    # unlisted file, missing file, duplicate entry
    series.write_text(f"{names[0]}\n{names[0]}\n0003-missing.patch\n")
    rc, out, _ = env.run("lint")
    assert rc == 1
    assert f"{names[1]}: not listed in series" in out
    assert "0003-missing.patch: no such file" in out
    assert "listed twice" in out
    # a header-less patch (plain git diff output) and one escaping the tree
    series.write_text("".join(f"{n}\n" for n in names + ["0003-bare.patch", "0004-escape.patch"]))
    (env.patches / "0003-bare.patch").write_text(
        "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# a\n+# b\n"
    )
    escape = (env.patches / names[0]).read_text().replace("a/src/llama.cpp", "a/../outside.cpp")
    (env.patches / "0004-escape.patch").write_text(escape)
    rc, out, _ = env.run("lint")
    assert rc == 1
    assert "0003-bare.patch: no subject" in out and "0003-bare.patch: no body" in out
    assert "0004-escape.patch: path '../outside.cpp' leaves the upstream tree" in out
    assert names[0] + ":" not in out


def test_lint_body_and_hunks():
    head = (
        f"{up.ZERO_FROM}Mon Sep 17 00:00:00 2001\nFrom: a <a@b>\nDate: x\n"
        "Subject: [PATCH] sql: drop a\n comment\n\n"
    )
    diff = (
        "---\n f | 2 +-\n\ndiff --git a/f.sql b/f.sql\nindex 1..2 100644\n--- a/f.sql\n+++ b/f.sql\n"
        "@@ -1,2 +1,2 @@\n--- ../../etc/passwd\n+-- new\n ctx\n"
    )
    assert up.lint_patch("x", (head + "Why: it is wrong.\n\nMore.\n" + diff).encode()) == []
    only_trailer = up.lint_patch("x", (head + "Signed-off-by: a <a@b>\n" + diff).encode())
    assert any("no body" in p for p in only_trailer)
    assert any("no body" in p for p in up.lint_patch("x", (head + diff).encode()))


def test_lint_pin(env):
    env.pin.write_text('[source]\npackage = "x"\nsha256 = "ABC"\n')
    rc, out, _ = env.run("lint")
    assert rc == 1
    assert "missing table [upstream]" in out and "[source] filename" in out and "64 lowercase hex" in out


def test_pack_trims_and_is_deterministic(env):
    env.make_two_patches()
    out1 = env.tmp / "a.tar.gz"
    out2 = env.tmp / "b.tar.gz"
    env.ok("pack", "--out", str(out1))
    env.ok("pack", "--out", str(out2))
    assert out1.read_bytes() == out2.read_bytes()
    with tarfile.open(out1) as tf:
        names = set(tf.getnames())
        stamp = json.loads(tf.extractfile("llama.cpp/" + up.STAMP_NAME).read())
        assert tf.getmember("llama.cpp/scripts/run.sh").mode == 0o755
        assert b"return 100;" in tf.extractfile("llama.cpp/src/llama.cpp").read()
    for kept in (
        "src/llama.cpp",
        "models/ggml-vocab-llama-spm.gguf",
        "ggml/src/ggml-cuda/ggml-cuda.cu",
        "ggml/src/ggml.c",
        "examples/CMakeLists.txt",
        "examples/simple/simple.cpp",
        "examples/training/train.cpp",
        "tools/ui/CMakeLists.txt",
        ".gitignore",
    ):
        assert f"llama.cpp/{kept}" in names, kept
    for dropped in (
        "docs/guide.md",
        "models/ggml-vocab-big.gguf",
        "ggml/src/ggml-vulkan/ggml-vulkan.cpp",
        "examples/llama.android/x.kt",
        "tools/ui/src/app.ts",
        "tools/mtmd/test-1.jpeg",
        ".git",
    ):
        assert f"llama.cpp/{dropped}" not in names, dropped
    assert stamp["series_hash"] == up.series_hash(env.pin, env.patches) and stamp["packed"]
    assert stamp["head"] == dev_git(env.tree, "rev-parse", "HEAD")
    # an unpacked pack counts as prepared for its own series (the GPU machine has no archive, no git)
    unpacked = env.tmp / "gpu"
    with tarfile.open(out1) as tf:
        tf.extractall(unpacked, filter="data")
    _, err = env.ok("prepare", tree=unpacked / "llama.cpp")
    assert "unpacked from `pack`" in err
    write_pin(env.pin, env.sha, extra="# another series\n")
    rc, _, err = env.run("prepare", tree=unpacked / "llama.cpp")
    assert rc == 1 and "unpacked `pack` of another series" in err

"""Progress and summary: a bar on stderr when it is a terminal, one summary line, --quiet silences both."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from tests.conftest import make_tree, tree_hashes


def run_with_tty_stderr(env, *args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout stays a pipe, as under neuro-flow)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "wabucketref", "--bucket", env.bucket, "--project-name", "proj", *args],
        env=env.vars, cwd=env.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=120)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_terminal_and_quiet(env, tmp_path):
    src = make_tree(tmp_path / "src")
    code, stdout, tty = run_with_tty_stderr(env, "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "p1")
    assert code == 0, tty
    assert "files" in tty and "%|" in tty  # tqdm's bar, with the files counter
    assert "uploaded 7 files" in tty and "MB/s" in tty
    assert stdout.splitlines()[0] == "::set-output name=artifact_name::ds"  # stdout stays parseable

    # the large file's ranges stream in threads, which hand their progress to the loop
    code, stdout, tty = run_with_tty_stderr(env, "download", "dataset", "ds", "p1", "-d", str(tmp_path / "dl0"))
    assert code == 0, tty
    assert "%|" in tty and "downloaded 7 files" in tty
    assert tree_hashes(tmp_path / "dl0") == tree_hashes(src)

    code, stdout, tty = run_with_tty_stderr(env, "-q", "download", "dataset", "ds", "p1", "-d", str(tmp_path / "dl"))
    assert code == 0, tty
    assert tty.strip() == ""
    assert stdout.strip() == str(tmp_path / "dl")
    # the command's own -q is as quiet as the global one (W&B offline logs how it resolved the alias)
    code, stdout, tty = run_with_tty_stderr(env, "download", "dataset", "ds", "p1", "-d", str(tmp_path / "dl1"), "-q")
    assert code == 0 and tty.strip() == "", tty
    code, stdout, tty = run_with_tty_stderr(env, "verify", "dataset", "ds", "p1", "-q")
    assert code == 0 and tty.strip() == "", tty

    # not a terminal: no bar, but the summary line
    proc = env.wabucket("download", "dataset", "ds", "p1", "-d", str(tmp_path / "dl2"), check=True)
    assert "%|" not in proc.stderr and "downloaded 7 files" in proc.stderr


def test_summary_counts_read_as_english():
    from wabucketref.progress import Stats

    one = Stats("uploaded", files=1, bytes=8, skipped_files=1, skipped_bytes=5).summary()
    assert one.startswith("uploaded 1 file (8 B) in ") and one.endswith("; 1 file (5 B) was already there"), one
    many = Stats("downloaded", files=3, bytes=3000, skipped_files=2, skipped_bytes=2000).summary()
    assert many.startswith("downloaded 3 files (3.0 KB) in ") and many.endswith("; 2 files (2.0 KB) were already there"), many

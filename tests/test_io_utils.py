import os

import pytest

from nnshrink.io_utils import atomic_path, atomic_write_bytes


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_written_file_gets_the_usual_mode(tmp_path):
    p = tmp_path / "m.bin"
    atomic_write_bytes(p, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask


def test_check_input_file_names_the_kind(tmp_path):
    from nnshrink.errors import CheckpointError
    from nnshrink.io_utils import check_input_file

    os.mkfifo(tmp_path / "p")
    (tmp_path / "f").write_bytes(b"x")
    assert check_input_file(tmp_path / "f") == tmp_path / "f"
    for path, words in [(tmp_path, "is a directory"), (tmp_path / "p", "named pipe"),
                        ("/dev/zero", "character device"), (tmp_path / "nope", "no such file")]:
        with pytest.raises(CheckpointError, match=words):
            check_input_file(path, CheckpointError)


def test_check_output_file_rules(tmp_path):
    from nnshrink.errors import OutputError
    from nnshrink.io_utils import check_output_file

    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert check_output_file(tmp_path / "new") == tmp_path / "new"
    assert check_output_file(tmp_path / "f", force=True) == tmp_path / "f"
    for path, words in [(tmp_path / "f", "--force"), (tmp_path / "no" / "x", "does not exist"),
                        (tmp_path / "f" / "x", "is not a folder"), (tmp_path, "is a directory"),
                        (tmp_path / "dangling", "dangling symlink")]:
        with pytest.raises(OutputError, match=words):
            check_output_file(path)


def test_write_error_reads_oserror_and_rust_messages():
    import errno

    from nnshrink.io_utils import write_error

    assert write_error(OSError(errno.ENOSPC, "full")) == errno.ENOSPC
    assert write_error(RuntimeError("I/O error: Permission denied (os error 13)")) == errno.EACCES
    assert write_error(OSError(errno.ENOENT, "gone")) is None and write_error(ValueError("x")) is None


def test_real_full_disk_if_a_small_tmpfs_can_be_mounted(tmp_path):
    """The real ENOSPC, not a simulated one, where the machine lets a test mount a 64 KiB tmpfs."""
    import subprocess

    from nnshrink.errors import OutputError

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "f").write_bytes(b"old")
        with pytest.raises(OutputError, match="no space left.*unchanged"):
            atomic_write_bytes(mnt / "f", b"x" * (1 << 20))
        assert (mnt / "f").read_bytes() == b"old" and sorted(p.name for p in mnt.iterdir()) == ["f"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)

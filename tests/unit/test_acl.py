"""fpm.acl: the POSIX ACL a socket gets from listen.acl_users and listen.acl_groups, in the
kernel's xattr format, read back from real files."""
import os
import shutil
import stat
import subprocess

import pytest

from fpm import acl
from fpm.acl import GROUP, GROUP_OBJ, MASK, OTHER, UNDEFINED_ID as NONE, USER, USER_OBJ

# What `setfacl -m u:65534:rw,g:0:rw f` writes on a file of mode 0644 (captured once).
SETFACL = bytes.fromhex("0200000001000600ffffffff02000600feff000004000400ffffffff0800060000000000"
                        "10000600ffffffff20000400ffffffff")


def test_encode_is_the_kernels_format():
    entries = acl.grant(acl.from_mode(0o644), [65534], [0])
    assert acl.encode(entries) == SETFACL
    assert acl.decode(SETFACL) == entries


def test_grant_adds_read_write_and_the_mask_sorted_by_tag_then_id():
    entries = acl.grant(acl.from_mode(0o600), [1000, 33, 1000], [50])
    assert entries == [(USER_OBJ, 6, NONE), (USER, 6, 33), (USER, 6, 1000), (GROUP_OBJ, 0, NONE),
                       (GROUP, 6, 50), (MASK, 6, NONE), (OTHER, 0, NONE)]


def test_grant_keeps_existing_entries_and_widens_them():
    existing = [(USER_OBJ, 7, NONE), (USER, 4, 33), (USER, 1, 77), (GROUP_OBJ, 5, NONE),
                (MASK, 4, NONE), (OTHER, 0, NONE)]
    entries = acl.grant(existing, [33], [])
    # 33 gains write; 77 keeps execute; the mask is the union of the group class again
    assert entries == [(USER_OBJ, 7, NONE), (USER, 6, 33), (USER, 1, 77), (GROUP_OBJ, 5, NONE),
                       (MASK, 7, NONE), (OTHER, 0, NONE)]


def test_nothing_granted_leaves_the_minimal_acl():
    assert acl.grant(acl.from_mode(0o640), [], []) == acl.from_mode(0o640)


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00\x00", SETFACL[:-1]])
def test_decode_refuses_anything_else(data):
    with pytest.raises(ValueError, match="not a version 2 POSIX ACL"):
        acl.decode(data)


def test_apply_on_a_real_file(tmp_path):
    path = tmp_path / "f"
    path.touch(0o600)
    path.chmod(0o600)
    assert acl.read(str(path)) == acl.from_mode(0o600)  # no extended ACL yet
    acl.apply(str(path), [65534], [0])
    assert acl.read(str(path)) == acl.grant(acl.from_mode(0o600), [65534], [0])
    # the group bits of the mode now show the mask, as ls -l shows a '+' file's
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    if shutil.which("getfacl"):
        out = subprocess.run(["getfacl", "-n", "-c", str(path)], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == ["user::rw-", "user:65534:rw-", "group::---", "group:0:rw-", "mask::rw-",
                       "other::---"]


def test_apply_keeps_what_a_default_acl_gave(tmp_path):
    """A directory's default ACL is inherited by a new file; the socket keeps those entries."""
    directory = tmp_path / "d"
    directory.mkdir()
    default = acl.grant(acl.from_mode(0o750), [4242], [])
    os.setxattr(str(directory), "system.posix_acl_default", acl.encode(default))
    old = os.umask(0o077)
    try:
        (directory / "f").touch()
    finally:
        os.umask(old)
    acl.apply(str(directory / "f"), [65534], [])
    users = {id_: perm for tag, perm, id_ in acl.read(str(directory / "f")) if tag == USER}
    assert users == {4242: 6, 65534: 6}

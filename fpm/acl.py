"""POSIX access ACLs on a unix socket (listen.acl_users, listen.acl_groups), as PHP-FPM sets
them with libacl: read and write for each user and group, plus the mask entry.

The ACL is written as the ``system.posix_acl_access`` extended attribute in the kernel's
documented binary format (linux/posix_acl_xattr.h): a little-endian u32 version (2), then
one (u16 tag, u16 perm, u32 id) entry per line of the ACL, sorted by tag, then id. This
keeps pyfpm free of a compiled dependency: pylibacl needs libacl's headers to build.
"""
from __future__ import annotations

import errno
import os
import struct
from typing import Iterable

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
READ, WRITE, EXECUTE = 4, 2, 1
UNDEFINED_ID = 0xFFFFFFFF  # the id of the entries that name no user or group

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

Entry = tuple[int, int, int]  # (tag, perm, id)


def from_mode(mode: int) -> list[Entry]:
    """The minimal ACL a file without an extended one has: its owner, group and other bits."""
    return [(USER_OBJ, (mode >> 6) & 7, UNDEFINED_ID), (GROUP_OBJ, (mode >> 3) & 7, UNDEFINED_ID),
            (OTHER, mode & 7, UNDEFINED_ID)]


def encode(entries: Iterable[Entry]) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in sorted(entries, key=_order))


def decode(data: bytes) -> list[Entry]:
    """ValueError unless ``data`` is a version 2 ACL."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size \
            or _HEADER.unpack_from(data)[0] != VERSION:
        raise ValueError("not a version %d POSIX ACL" % VERSION)
    return [e for e in _ENTRY.iter_unpack(data[_HEADER.size:])]


def grant(entries: Iterable[Entry], uids: Iterable[int], gids: Iterable[int],
          perm: int = READ | WRITE) -> list[Entry]:
    """``entries`` plus ``perm`` for each user and group, and the mask recomputed as the union
    of the group class (what acl_calc_mask does): without it the new entries would be capped
    by the old group bits."""
    perms = {(tag, id_): p for tag, p, id_ in entries if tag != MASK}
    for tag, ids in ((USER, uids), (GROUP, gids)):
        for id_ in ids:
            perms[(tag, id_)] = perms.get((tag, id_), 0) | perm
    mask = 0
    for (tag, _), p in perms.items():
        if tag in (USER, GROUP_OBJ, GROUP):
            mask |= p
    result = [(tag, p, id_) for (tag, id_), p in perms.items()]
    if any(tag in (USER, GROUP) for tag, _, _ in result):
        result.append((MASK, mask, UNDEFINED_ID))
    return sorted(result, key=_order)


def _order(entry: Entry) -> tuple[int, int]:
    return entry[0], entry[2]


def read(path: str) -> list[Entry]:
    """The access ACL of ``path``: its extended one, else the one its mode bits make."""
    try:
        return decode(os.getxattr(path, XATTR))
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
    return from_mode(os.stat(path).st_mode)


def apply(path: str, uids: Iterable[int], gids: Iterable[int]) -> None:
    """Give each user and group read and write access to ``path`` (OSError as the kernel
    says: EOPNOTSUPP where the file system has no ACLs). Entries it already has (such as
    those a default ACL of its directory gave it) are kept."""
    os.setxattr(path, XATTR, encode(grant(read(path), uids, gids)))

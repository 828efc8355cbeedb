"""Large messages in files instead of memory: what the milter received, and what the crypto workers made of it.

A 25 MiB message with attachments would otherwise be held several times over: as the chunks Postfix sent, as
one joined message, pickled to a worker and back, and once more as the new message. Past :data:`SPOOL_OVER` a
message is a :class:`Spool`, a 0600 file in the temporary folder (private to the service under systemd's
PrivateTmp), read and written in blocks. Below it, bytes, as before: small mail costs no file.

Whoever creates a spool removes it (:func:`remove`); the milter does so when its transaction ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from directmilter.errors import TemporaryFailure

#: Messages larger than this are kept in a file.
SPOOL_OVER = 1 << 20
#: The names of spool files begin so; the sweeper removes old files of this name only (in a shared /tmp, nothing
#: another program is likely to name so).
PREFIX = "directmilter-spool-"
BLOCK = 1 << 20


@dataclass(frozen=True)
class Spool:
    """A message held in the file ``path`` (``size`` bytes)."""

    path: str
    size: int


#: A message as the agent passes it around: bytes when small, a spool file when large.
Message = bytes | Spool


def directory() -> str:
    """Where spool files go: $TMPDIR, else /tmp (systemd's PrivateTmp makes either private to the service).

    Not :func:`tempfile.gettempdir`: it tries each candidate by writing to it and silently moves on to the next
    (/var/tmp, the working directory), so a full disk would send health data somewhere nobody chose.
    """
    return os.environ.get("TMPDIR") or "/tmp"


class Writer:
    """Collects a message piece by piece: in memory while it is small, in a spool file once it is not."""

    def __init__(self, over: int = SPOOL_OVER) -> None:
        self.over = over
        self.size = 0
        self._pieces: list[bytes] = []
        self._file: BinaryIO | None = None
        self._path = ""

    def write(self, piece: bytes | bytearray | memoryview) -> None:
        self.size += len(piece)
        try:
            if self._file is None and self.size > self.over:
                # mode 0600; the name says which process wrote it, so a dead writer's files go at once
                descriptor, self._path = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", dir=directory())
                self._file = os.fdopen(descriptor, "wb")
                self._file.writelines(self._pieces)
                self._pieces = []
            if self._file is not None:
                self._file.write(piece)
            else:
                self._pieces.append(bytes(piece))
        except OSError as exc:
            self.abandon()
            raise TemporaryFailure(f"the message cannot be spooled to disk ({exc.strerror or exc})") from exc

    def finish(self) -> Message:
        if self._file is None:
            return b"".join(self._pieces)
        try:
            self._file.close()
        except OSError as exc:
            self.abandon()
            raise TemporaryFailure(f"the message cannot be spooled to disk ({exc.strerror or exc})") from exc
        return Spool(self._path, self.size)

    def abandon(self) -> None:
        """Drop what was written (an error, or the message was refused): nothing is left on disk."""
        self._pieces = []
        if self._file is not None:
            with contextlib.suppress(OSError):  # closing flushes, and the disk may be the very reason we are here
                self._file.close()
            self._file = None
            Path(self._path).unlink(missing_ok=True)


def collect(pieces: Iterable[bytes | bytearray | memoryview], over: int = SPOOL_OVER) -> Message:
    """Everything ``pieces`` yields, as one message (a spool if it grows past ``over``)."""
    writer = Writer(over)
    try:
        for piece in pieces:
            writer.write(piece)
    except BaseException:
        writer.abandon()
        raise
    return writer.finish()


def size(message: Message) -> int:
    return message.size if isinstance(message, Spool) else len(message)


def stream(message: Message) -> BinaryIO:
    return open(message.path, "rb") if isinstance(message, Spool) else io.BytesIO(message)


def read(message: Message) -> bytes:
    return Path(message.path).read_bytes() if isinstance(message, Spool) else message


def take(message: Message) -> bytes:
    """The message's bytes, its file (if any) removed: for results that are small, such as notifications."""
    try:
        return read(message)
    finally:
        remove(message)


def blocks(message: Message, start: int = 0, block: int = BLOCK) -> Iterator[bytes]:
    """The message from ``start`` on, in blocks."""
    with stream(message) as source:
        source.seek(start)
        while piece := source.read(block):
            yield piece


def head(message: Message) -> bytes:
    """The header block and the empty line after it (the whole message when it has no body)."""
    if not isinstance(message, Spool):
        end = message.find(b"\r\n\r\n")
        return message if end < 0 else message[: end + 4]
    found = b""
    for piece in blocks(message, block=64 * 1024):
        found += piece
        end = found.find(b"\r\n\r\n")
        if end >= 0:
            return found[: end + 4]
    return found


def sha256(message: Message) -> str:
    digest = hashlib.sha256()
    for piece in blocks(message):
        digest.update(piece)
    return digest.hexdigest()


def _writer_gone(path: Path) -> bool:
    """The process named in the file's name (``PREFIX<pid>-...``) no longer exists."""
    pid, sep, _ = path.name[len(PREFIX):].partition("-")
    if not sep or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def sweep(older_than: float, *, now: float | None = None) -> int:
    """Remove spool files whose writer is dead, and any last written more than ``older_than`` seconds ago: what a
    milter or worker killed in the middle of a message leaves behind (every transaction removes its own files),
    the decrypted message among them. Returns how many went."""
    cutoff = (time.time() if now is None else now) - older_than
    removed = 0
    for path in Path(directory()).glob(f"{PREFIX}*"):
        try:
            if path.is_file() and not path.is_symlink() and (path.stat().st_mtime < cutoff or _writer_gone(path)):
                path.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def adopt(message: Message) -> Message:
    """The spool file a worker wrote, renamed after this process: the caller owns it now, and the sweep must not
    take it for a dead writer's leftover should the worker die while the caller still reads it."""
    if not isinstance(message, Spool):
        return message
    path = Path(message.path)
    pid, sep, rest = path.name[len(PREFIX):].partition("-")
    if not sep or pid == str(os.getpid()):
        return message
    mine = path.with_name(f"{PREFIX}{os.getpid()}-{rest}")
    path.rename(mine)
    return Spool(str(mine), message.size)


def remove(message: Message | None) -> None:
    if isinstance(message, Spool):
        Path(message.path).unlink(missing_ok=True)

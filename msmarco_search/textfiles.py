"""What the project reads as a text file (TSVs, qrels, JSON lines), and how it tells a file that only looks like one.

- **Encoding**: UTF-8 (a UTF-8 byte-order mark is dropped by the readers). Bytes that are not UTF-8 are read as
  Windows-1252 (``TEXT_ERRORS``), the superset of Latin-1 that files written on Windows use: a Latin-1 or cp1252
  file then reads right (``café``, ``’``), and a UTF-8 file with a stray Latin-1 byte keeps its UTF-8 text. Every
  byte is one of Windows-1252's characters (the five it leaves undefined are read as Latin-1's), so no text is
  ever replaced by ``U+FFFD``.
- **Not text** (``check_text_head``): a file that starts with a UTF-16 or UTF-32 byte-order mark (its ASCII
  would come out with a NUL between letters), a compressed file or archive under a text name (gzip, bzip2, xz,
  zstd, zip), a parquet file or a pickle, and a file holding NUL bytes or mostly control characters (binary
  data, or UTF-16 without a mark) are refused with one line that says what the file is and how to convert it.
  The readers refuse a NUL byte found later in a file the same way (``nul_error``).
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from .errors import PipelineError

TEXT_ERRORS = "msmarco-cp1252"  # the codecs error handler registered below


def _cp1252(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D: undefined in cp1252, read as Latin-1 reads them
        return chr(byte)


_CP1252 = "".join(_cp1252(byte) for byte in range(256))


def _read_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    """Codecs error handler: the bytes UTF-8 cannot decode, as Windows-1252 characters."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(_CP1252[byte] for byte in error.object[error.start:error.end]), error.end


codecs.register_error(TEXT_ERRORS, _read_as_cp1252)


def decode_text(raw: bytes) -> str:
    """``raw`` as the text readers read it: UTF-8, and any byte that is not UTF-8 as Windows-1252."""
    return raw.decode("utf-8", TEXT_ERRORS)


# (leading bytes, what the file is, how to get text out of it)
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xfe\x00\x00", "UTF-32 text (it starts with a UTF-32 byte-order mark)",
     "convert it to UTF-8 first (iconv -f UTF-32 -t UTF-8 FILE > NEW)"),
    (b"\x00\x00\xfe\xff", "UTF-32 text (it starts with a UTF-32 byte-order mark)",
     "convert it to UTF-8 first (iconv -f UTF-32 -t UTF-8 FILE > NEW)"),
    (b"\xff\xfe", "UTF-16 text (it starts with a UTF-16 byte-order mark)",
     "convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8 FILE > NEW)"),
    (b"\xfe\xff", "UTF-16 text (it starts with a UTF-16 byte-order mark)",
     "convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8 FILE > NEW)"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gzip -dc FILE > NEW)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (xz -dc FILE > NEW)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -dc FILE > NEW)"),
    (b"PK\x03\x04", "a zip archive", "unpack it first (unzip FILE)"),
    (b"PAR1", "a parquet file", "give it a .parquet name, or pass a text file"),
)
_BZIP2 = re.compile(rb"BZh[1-9]1AY&SY")
_PICKLE = re.compile(rb"\x80[\x02-\x05]")
# bytes no text file holds: C0 controls other than tab, line feed, vertical tab, form feed, carriage return and
# escape, and DEL
_CONTROL = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_CONTROL_SHARE = 0.05  # text has next to none; random bytes have 11 %


def check_text_head(path: Path, head: bytes) -> None:
    """Refuse a file whose first bytes ``head`` show it is not UTF-8 text, naming what it is and the remedy."""
    for signature, what, remedy in _SIGNATURES:
        if head.startswith(signature):
            raise PipelineError(f"is {what}, not UTF-8 text; {remedy}", path)
    if _BZIP2.match(head):
        raise PipelineError("is bzip2-compressed, not UTF-8 text; decompress it first (bzip2 -dc FILE > NEW)", path)
    if _PICKLE.match(head):  # protocol 2 and later; no text starts with 0x80 and a control character
        raise PipelineError("is a pickle, not UTF-8 text", path)
    position = head.find(b"\x00")
    if position >= 0:
        raise nul_error(path, head.count(b"\n", 0, position) + 1)
    controls = len(head) - len(head.translate(None, _CONTROL))
    if controls > _CONTROL_SHARE * len(head):
        raise PipelineError(f"is not UTF-8 text: {controls / len(head):.0%} of its first bytes are control "
                            "characters (binary data?)", path)


def nul_error(path: Path, line: int) -> PipelineError:
    """The error for a NUL byte at ``line``: no text file holds one, so the file is binary or UTF-16/32."""
    return PipelineError(f"is not UTF-8 text: line {line} holds a NUL byte (binary data, or UTF-16/32 text "
                         "without a byte-order mark)", path)

"""The cold snapshot codec: exact round trips, and every corruption is ``SnapshotCorrupt``.

Tampering tests start from a valid snapshot, change exactly one thing and (unless
the checksum itself is under test) recompute the checksum, so the check named in
the ``match=`` is the one that catches it, not the checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from typing import Any, get_args

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.errors import InvalidMessage, SnapshotCorrupt
from storage.keys import validate_message_id
from storage.records import encode_message
from storage.snapshot import (
    FORMAT,
    SCHEMA,
    Compression,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)

TID = "thread-1"
COMPRESSIONS: tuple[Compression, ...] = get_args(Compression)


def record(message_id: str, body: Any) -> bytes:
    return encode_message({"id": message_id, "body": body}).record


def make_snapshot(
    bodies: dict[str, Any] | None = None,
    *,
    thread_id: str = TID,
    retired_ids: tuple[str, ...] = (),
    **fields: Any,
) -> Snapshot:
    if bodies is None:
        bodies = {"m0": "hello", "m1": {"role": "user", "n": [1, 2.5, None]}, "m2": True}
    values: dict[str, Any] = {
        "thread_id": thread_id,
        "namespace": "at",
        "version": 7,
        "epoch": "epoch-1",
        "created_ms": 1_700_000_000_000,
        "updated_ms": 1_700_000_000_500,
        "parent": None,
        "fork_point": None,
        "creator": None,
        "state": {"step": 3},
        "ids": tuple(bodies),
        "records": tuple(record(i, b) for i, b in bodies.items()),
        "retired_ids": retired_ids,
    }
    values.update(fields)
    return Snapshot(**values)


def gunzip(data: bytes) -> bytes:
    return zlib.decompress(data, 31)


def gzip_bytes(raw: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(raw) + packer.flush()


def checksum(header: dict[str, Any], payload: bytes) -> str:
    """The documented checksum: SHA-256 of the header without its checksum field,
    a newline, and the payload (computed here independently of storage/snapshot.py)."""
    rest = {k: v for k, v in header.items() if k != "checksum"}
    digest = hashlib.sha256(json.dumps(rest, ensure_ascii=False, separators=(",", ":")).encode())
    digest.update(b"\n" + payload)
    return "sha256:" + digest.hexdigest()


def valid_parts() -> tuple[dict[str, Any], dict[str, Any], list[bytes]]:
    """Header, index and records of a valid snapshot, as separate editable pieces."""
    raw = gunzip(encode_snapshot(make_snapshot()))
    header_line, index_line, *records = raw.split(b"\n")
    return json.loads(header_line), json.loads(index_line), records


def assemble(
    header: dict[str, Any],
    index: dict[str, Any] | bytes,
    records: list[bytes],
    *,
    recompute_checksum: bool = True,
    compression: Compression = "gzip",
) -> bytes:
    """Build a snapshot object from pieces; ``index`` may be raw bytes for non-JSON tests."""
    index_line = (
        index
        if isinstance(index, bytes)
        else json.dumps(index, ensure_ascii=False, separators=(",", ":")).encode()
    )
    payload = b"\n".join((index_line, *records))
    header = dict(header)
    if recompute_checksum:
        header["checksum"] = checksum(header, payload)
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" + payload
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return gzip_bytes(raw)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_preserves_every_field(compression: Compression) -> None:
    snapshot = make_snapshot(retired_ids=("old-1", "old-2"))

    decoded = decode_snapshot(encode_snapshot(snapshot, compression), TID)

    assert decoded == snapshot
    assert decoded.records == snapshot.records
    assert decoded.messages() == [
        {"id": "m0", "body": "hello"},
        {"id": "m1", "body": {"role": "user", "n": [1, 2.5, None]}},
        {"id": "m2", "body": True},
    ]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_of_empty_thread(compression: Compression) -> None:
    snapshot = make_snapshot({}, state={})

    decoded = decode_snapshot(encode_snapshot(snapshot, compression), TID)

    assert decoded == snapshot
    assert decoded.records == ()
    assert decoded.ids == ()
    assert decoded.messages() == []


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_of_unicode_ids_and_bodies(compression: Compression) -> None:
    bodies = {
        "ünï-😀": "héllo wörld 🌍",
        "日本語": {"テキスト": "改行\nと\ttab", "rtl": "\u05e9\u05dc\u05d5\u05dd"},
        'q"uote\\back': ["\u2028 line separator", "\x00 nul", "\ufeff bom"],
    }
    snapshot = make_snapshot(bodies, retired_ids=("ä-retired",), state={"ключ": "значение"})

    decoded = decode_snapshot(encode_snapshot(snapshot, compression), TID)

    assert decoded == snapshot
    assert [m["id"] for m in decoded.messages()] == list(bodies)
    assert [m["body"] for m in decoded.messages()] == list(bodies.values())


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_keeps_retired_ids_and_state(compression: Compression) -> None:
    state = {"plan": ["a", "b"], "depth": {"x": {"y": 1.25}}, "flag": False, "none": None}
    snapshot = make_snapshot(retired_ids=("r1", "r2", "r3"), state=state)

    decoded = decode_snapshot(encode_snapshot(snapshot, compression), TID)

    assert decoded.retired_ids == ("r1", "r2", "r3")
    assert decoded.state == state


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize(
    "lineage",
    [
        {"parent": None, "fork_point": None, "creator": None},
        {"parent": "source-thread", "fork_point": "m1", "creator": "agent:planner"},
        {"parent": "source-thread", "fork_point": None, "creator": None},
    ],
)
def test_round_trip_keeps_lineage_none_or_set(
    compression: Compression, lineage: dict[str, str | None]
) -> None:
    snapshot = make_snapshot(**lineage)

    decoded = decode_snapshot(encode_snapshot(snapshot, compression), TID)

    assert (decoded.parent, decoded.fork_point, decoded.creator) == tuple(lineage.values())
    assert decoded == snapshot


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_records_are_kept_byte_for_byte_not_re_encoded(compression: Compression) -> None:
    # Not what json.dumps would produce: odd spacing, key order, escapes, -0.0.
    odd = b'{"id":"m0","body": { "z" : 1 , "a" : "\\u00e9", "f": -0.0, "e": 1E5 }}'
    snapshot = make_snapshot({}, ids=("m0",), records=(odd,))

    decoded = decode_snapshot(encode_snapshot(snapshot, compression), TID)

    assert decoded.records == (odd,)
    assert decoded.messages() == [{"id": "m0", "body": {"z": 1, "a": "é", "f": -0.0, "e": 1e5}}]


def test_large_zstd_snapshot_decodes_completely() -> None:
    # Several MB: a short read of the zstd stream would truncate it and fail the checksum.
    bodies = {f"m{i}": "x" * 4000 + str(i) for i in range(2000)}
    snapshot = make_snapshot(bodies)

    assert decode_snapshot(encode_snapshot(snapshot, "zstd"), TID) == snapshot


def test_unknown_compression_is_refused_with_value_error() -> None:
    with pytest.raises(ValueError, match="unknown compression"):
        encode_snapshot(make_snapshot(), "lz4")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- readable format


def test_gzip_snapshot_is_one_json_text_per_line_with_header_first() -> None:
    snapshot = make_snapshot(retired_ids=("r1",))

    lines = gzip.decompress(encode_snapshot(snapshot, "gzip")).split(b"\n")
    texts = [json.loads(line) for line in lines]

    header, index, *records = texts
    assert header["format"] == "agent-threads/snapshot" == FORMAT
    assert header["schema"] == 1 == SCHEMA
    assert header["thread_id"] == TID
    assert header["count"] == 3 == len(records)
    assert header["checksum"] == checksum(header, b"\n".join(lines[1:]))
    assert index == {
        "state": {"step": 3},
        "ids": ["m0", "m1", "m2"],
        "retired_ids": ["r1"],
        "turns": [],
    }
    assert records == snapshot.messages()


def test_zstd_snapshot_decompresses_to_the_same_lines_as_gzip() -> None:
    snapshot = make_snapshot()

    from_zstd = (
        zstandard.ZstdDecompressor().decompressobj().decompress(encode_snapshot(snapshot, "zstd"))
    )

    assert from_zstd == gunzip(encode_snapshot(snapshot, "gzip"))


# --------------------------------------------------------------------------- compression layer


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"format":"agent-threads/snapshot","schema":1}\n',
        os.urandom(64),
        b"\x1f",
        b"\x28\xb5\x2f",
    ],
    ids=["empty", "json-object", "uncompressed-header", "random", "half-gzip-magic", "zstd-3b"],
)
def test_uncompressed_or_random_bytes_are_corrupt(data: bytes) -> None:
    with pytest.raises(SnapshotCorrupt, match="neither gzip nor zstd"):
        decode_snapshot(data, TID)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_magic_followed_by_garbage_is_corrupt(compression: Compression) -> None:
    magic = b"\x1f\x8b" if compression == "gzip" else b"\x28\xb5\x2f\xfd"
    for tail in (b"", b"\x00", os.urandom(40), b"\xff" * 100):
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(magic + tail, TID)


def test_gzip_truncated_in_the_middle_is_corrupt() -> None:
    blob = encode_snapshot(make_snapshot(), "gzip")

    with pytest.raises(SnapshotCorrupt, match="truncated"):
        decode_snapshot(blob[: len(blob) // 2], TID)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_proper_prefix_of_a_snapshot_is_corrupt(compression: Compression) -> None:
    blob = encode_snapshot(make_snapshot(), compression)

    for cut in range(len(blob)):
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(blob[:cut], TID)


def test_flipped_byte_inside_gzip_stream_is_corrupt() -> None:
    blob = bytearray(encode_snapshot(make_snapshot(), "gzip"))
    # 10-byte gzip header, deflate data, 8-byte trailer: flip a byte of the deflate data.
    position = 10 + (len(blob) - 18) // 2
    blob[position] ^= 0xFF

    with pytest.raises(SnapshotCorrupt):
        decode_snapshot(bytes(blob), TID)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_flipped_byte_anywhere_never_yields_a_different_snapshot(
    compression: Compression,
) -> None:
    snapshot = make_snapshot()
    blob = encode_snapshot(snapshot, compression)

    for position in range(len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            try:
                decoded = decode_snapshot(bytes(tampered), TID)
            except SnapshotCorrupt:
                continue
            # Only bytes that carry no data (gzip mtime/xfl/os fields) may change harmlessly.
            assert decoded == snapshot, f"flip {mask:#x} at {position} changed the snapshot"


def test_gzip_of_non_json_is_corrupt() -> None:
    with pytest.raises(SnapshotCorrupt, match="header is not JSON"):
        decode_snapshot(gzip_bytes(b"this is plain text\nnot json at all\n"), TID)


def test_gzip_of_invalid_utf8_is_corrupt() -> None:
    with pytest.raises(SnapshotCorrupt, match="header is not JSON"):
        decode_snapshot(gzip_bytes(b'{"format":"\xff\xfe"}\n'), TID)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_trailing_bytes_never_change_the_decoded_snapshot(compression: Compression) -> None:
    # Trailing data after the compressed stream is either refused or ignored; it can
    # never alter what decodes, because the decoded payload is what the checksum covers.
    snapshot = make_snapshot()
    blob = encode_snapshot(snapshot, compression)
    other = encode_snapshot(make_snapshot({"evil": 1}), compression)

    for tail in (b"\n", b"garbage", os.urandom(32), b"\x00" * 8, other):
        try:
            decoded = decode_snapshot(blob + tail, TID)
        except SnapshotCorrupt:
            continue
        assert decoded == snapshot


# --------------------------------------------------------------------------- size cap


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_decompression_bomb_beyond_max_bytes_is_corrupt(compression: Compression) -> None:
    zeros = b"\0" * 50_000_000
    bomb = (
        gzip_bytes(zeros) if compression == "gzip" else zstandard.ZstdCompressor().compress(zeros)
    )
    assert len(bomb) < 100_000

    with pytest.raises(SnapshotCorrupt, match="beyond 10000 bytes"):
        decode_snapshot(bomb, TID, max_bytes=10_000)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_valid_snapshot_larger_than_max_bytes_is_corrupt(compression: Compression) -> None:
    snapshot = make_snapshot({"big": "a" * 20_000})

    with pytest.raises(SnapshotCorrupt, match="beyond 10000 bytes"):
        decode_snapshot(encode_snapshot(snapshot, compression), TID, max_bytes=10_000)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_max_bytes_is_inclusive_of_the_exact_decompressed_size(compression: Compression) -> None:
    snapshot = make_snapshot()
    blob = encode_snapshot(snapshot, compression)
    size = len(gunzip(encode_snapshot(snapshot, "gzip")))

    assert decode_snapshot(blob, TID, max_bytes=size) == snapshot
    with pytest.raises(SnapshotCorrupt, match=f"beyond {size - 1} bytes"):
        decode_snapshot(blob, TID, max_bytes=size - 1)


# --------------------------------------------------------------------------- header checks


def test_foreign_json_object_is_corrupt() -> None:
    foreign = json.dumps({"v": 1, "messages": [{"role": "user", "content": "hi"}]}).encode()

    with pytest.raises(SnapshotCorrupt, match="foreign format"):
        decode_snapshot(gzip_bytes(foreign), TID)


@pytest.mark.parametrize(
    "header_line",
    [b"[1, 2, 3]", b'"agent-threads/snapshot"', b"null", b"42", b'{"format": "other/format"}'],
)
def test_header_that_is_not_our_format_is_corrupt(header_line: bytes) -> None:
    _, index, records = valid_parts()
    payload = json.dumps(index).encode()

    with pytest.raises(SnapshotCorrupt, match="foreign format"):
        decode_snapshot(gzip_bytes(b"\n".join((header_line, payload, *records))), TID)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("schema", [2, 0, "1", None, 1.5])
def test_unsupported_schema_is_corrupt(compression: Compression, schema: object) -> None:
    header, index, records = valid_parts()
    header["schema"] = schema

    with pytest.raises(SnapshotCorrupt, match=r"schema .* is not supported"):
        decode_snapshot(assemble(header, index, records, compression=compression), TID)


def test_missing_schema_is_corrupt() -> None:
    header, index, records = valid_parts()
    del header["schema"]

    with pytest.raises(SnapshotCorrupt, match="schema None is not supported"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_snapshot_of_another_thread_is_corrupt(compression: Compression) -> None:
    blob = encode_snapshot(make_snapshot(), compression)

    with pytest.raises(SnapshotCorrupt, match="belongs to thread 'thread-1', not 'thread-2'"):
        decode_snapshot(blob, "thread-2")


def test_decoding_with_an_invalid_expected_thread_id_is_corrupt() -> None:
    header, index, records = valid_parts()
    header["thread_id"] = "bad\nid"

    with pytest.raises(SnapshotCorrupt, match="invalid thread id"):
        decode_snapshot(assemble(header, index, records), "bad\nid")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_tampered_payload_with_the_old_checksum_is_corrupt(compression: Compression) -> None:
    header, index, records = valid_parts()
    records[0] = record("m0", "HELLO")  # same id, same framing: only the checksum differs

    blob = assemble(header, index, records, recompute_checksum=False, compression=compression)

    with pytest.raises(SnapshotCorrupt, match="fails its checksum"):
        decode_snapshot(blob, TID)


@pytest.mark.parametrize("value", ["sha256:" + "0" * 64, "md5:abc", None, 5, "", "SHA256:whatever"])
def test_wrong_or_missing_checksum_is_corrupt(value: object) -> None:
    header, index, records = valid_parts()
    header["checksum"] = value

    with pytest.raises(SnapshotCorrupt, match="fails its checksum"):
        decode_snapshot(assemble(header, index, records, recompute_checksum=False), TID)


def test_checksum_in_uppercase_hex_is_corrupt() -> None:
    header, index, records = valid_parts()
    header["checksum"] = "sha256:" + header["checksum"].removeprefix("sha256:").upper()

    with pytest.raises(SnapshotCorrupt, match="fails its checksum"):
        decode_snapshot(assemble(header, index, records, recompute_checksum=False), TID)


@pytest.mark.parametrize("count", [0, 2, 4, -1, 1000])
def test_count_that_differs_from_the_records_is_corrupt(count: int) -> None:
    header, index, records = valid_parts()
    header["count"] = count

    with pytest.raises(SnapshotCorrupt, match=f"has 3 records, not {count}"):
        decode_snapshot(assemble(header, index, records), TID)


def test_extra_record_line_without_count_change_is_corrupt() -> None:
    header, index, records = valid_parts()
    records.append(record("m3", "extra"))

    with pytest.raises(SnapshotCorrupt, match="has 4 records, not 3"):
        decode_snapshot(assemble(header, index, records), TID)


def test_trailing_newline_in_payload_is_corrupt() -> None:
    header, index, records = valid_parts()
    records.append(b"")

    with pytest.raises(SnapshotCorrupt, match="has 4 records, not 3"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "7"),
        ("version", True),
        ("version", 7.0),
        ("version", None),
        ("created_ms", "1700000000000"),
        ("created_ms", False),
        ("updated_ms", 1.5),
        ("updated_ms", [1]),
        ("namespace", 5),
        ("namespace", None),
        ("epoch", 1),
        ("epoch", None),
        ("count", "3"),
        ("count", True),
        ("count", 3.0),
    ],
)
def test_header_field_of_the_wrong_type_is_corrupt(field: str, value: object) -> None:
    header, index, records = valid_parts()
    header[field] = value

    with pytest.raises(SnapshotCorrupt, match=f"header field '{field}' is missing or malformed"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("field", ["version", "namespace", "epoch", "created_ms", "updated_ms"])
def test_missing_header_field_is_corrupt(field: str) -> None:
    header, index, records = valid_parts()
    del header[field]

    with pytest.raises(SnapshotCorrupt, match=f"header field '{field}' is missing or malformed"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("field", ["parent", "fork_point", "creator"])
@pytest.mark.parametrize("value", [5, True, ["p"], {"id": "p"}])
def test_lineage_field_of_the_wrong_type_is_corrupt(field: str, value: object) -> None:
    header, index, records = valid_parts()
    header[field] = value

    with pytest.raises(SnapshotCorrupt, match="lineage fields are malformed"):
        decode_snapshot(assemble(header, index, records), TID)


# --------------------------------------------------------------------------- index checks


def test_index_that_is_not_json_is_corrupt() -> None:
    header, _, records = valid_parts()

    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed"):
        decode_snapshot(assemble(header, b'{"state": {}, "ids": [', records), TID)


@pytest.mark.parametrize("index", [[], "ids", None, 3])
def test_index_that_is_not_an_object_is_corrupt(index: object) -> None:
    header, _, records = valid_parts()

    raw = json.dumps(index).encode()
    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed"):
        decode_snapshot(assemble(header, raw, records), TID)


@pytest.mark.parametrize("key", ["state", "ids", "retired_ids"])
def test_index_missing_a_key_is_corrupt(key: str) -> None:
    header, index, records = valid_parts()
    del index[key]

    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("state", [[], "state", None, 1, True, [{"a": 1}]])
def test_state_that_is_not_an_object_is_corrupt(state: object) -> None:
    header, index, records = valid_parts()
    index["state"] = state

    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed.*state must be"):
        decode_snapshot(assemble(header, index, records), TID)


def test_state_over_the_size_limit_is_corrupt() -> None:
    header, index, records = valid_parts()
    index["state"] = {"blob": "x" * (1024 * 1024)}

    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed.*state is"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("bad_id", ["m 1", "", "m\n1", "tab\tid", "zero\u200bwidth", 1, None])
def test_invalid_message_id_in_the_index_is_corrupt(bad_id: object) -> None:
    header, index, records = valid_parts()
    index["ids"][1] = bad_id

    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("bad_id", ["r 1", "", 7, "x" * 257])
def test_invalid_retired_id_in_the_index_is_corrupt(bad_id: object) -> None:
    header, index, records = valid_parts()
    index["retired_ids"] = ["ok", bad_id]

    with pytest.raises(SnapshotCorrupt, match=r"index .* is malformed"):
        decode_snapshot(assemble(header, index, records), TID)


def test_repeated_id_in_the_index_is_corrupt() -> None:
    header, index, records = valid_parts()
    # m1 -> m0 in the index and in the record, so the framing check alone would pass.
    index["ids"][1] = "m0"
    records[1] = record("m0", "a second m0")

    with pytest.raises(SnapshotCorrupt, match=r"ledger .* is inconsistent"):
        decode_snapshot(assemble(header, index, records), TID)


def test_id_both_listed_and_retired_is_corrupt() -> None:
    header, index, records = valid_parts()
    index["retired_ids"] = ["gone", "m2"]

    with pytest.raises(SnapshotCorrupt, match=r"ledger .* is inconsistent"):
        decode_snapshot(assemble(header, index, records), TID)


def test_index_listing_fewer_ids_than_records_is_corrupt() -> None:
    header, index, records = valid_parts()
    index["ids"] = index["ids"][:2]

    with pytest.raises(SnapshotCorrupt, match=r"ledger .* is inconsistent"):
        decode_snapshot(assemble(header, index, records), TID)


# --------------------------------------------------------------------------- record framing


def test_record_whose_id_differs_from_the_index_is_corrupt() -> None:
    header, index, records = valid_parts()
    records[1] = record("intruder", {"role": "user", "n": [1, 2.5, None]})

    with pytest.raises(SnapshotCorrupt, match=r"record 'm1' .* is malformed"):
        decode_snapshot(assemble(header, index, records), TID)


def test_records_in_another_order_than_the_index_are_corrupt() -> None:
    header, index, records = valid_parts()
    records[0], records[1] = records[1], records[0]

    with pytest.raises(SnapshotCorrupt, match=r"record 'm0' .* is malformed"):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":"m1","body":"cut',  # truncated: no closing brace
        b'{"body":"x","id":"m1"}',  # keys in another order: not the stored encoding
        b'{"id": "m1","body":1}',  # re-encoded with spaces: not the stored bytes
        b'{"id":"m1"}',
        b"[]",
        b"",
    ],
)
def test_record_that_is_not_framed_as_stored_is_corrupt(line: bytes) -> None:
    header, index, records = valid_parts()
    records[1] = line

    with pytest.raises(SnapshotCorrupt, match=r"record 'm1' .* is malformed"):
        decode_snapshot(assemble(header, index, records), TID)


# ----------------------------------------------------------- formerly known gaps (fixed)


def test_deeply_nested_header_is_corrupt() -> None:
    with pytest.raises(SnapshotCorrupt):
        decode_snapshot(gzip_bytes(b"[" * 100_000), TID)


def test_deeply_nested_state_is_corrupt() -> None:
    header, _, records = valid_parts()
    nested = b"[" * 100_000 + b"]" * 100_000
    raw = b'{"state":{"deep":' + nested + b'},"ids":["m0","m1","m2"],"retired_ids":[]}'

    with pytest.raises(SnapshotCorrupt):
        decode_snapshot(assemble(header, raw, records), TID)


def test_record_with_a_second_id_key_is_corrupt() -> None:
    header, index, records = valid_parts()
    records[1] = b'{"id":"m1","body":1,"id":"m0"}'

    with pytest.raises(SnapshotCorrupt):
        decode_snapshot(assemble(header, index, records), TID)


def test_record_whose_body_is_not_json_is_corrupt() -> None:
    header, index, records = valid_parts()
    records[1] = b'{"id":"m1","body":not json}'

    with pytest.raises(SnapshotCorrupt):
        decode_snapshot(assemble(header, index, records), TID)


@pytest.mark.parametrize("ids", ["ab", {"a": 0, "b": 1}])
def test_index_ids_that_are_not_a_list_are_corrupt(ids: object) -> None:
    header, index, _ = valid_parts()
    index["ids"] = ids
    records = [record("a", 1), record("b", 2)]
    header["count"] = 2

    with pytest.raises(SnapshotCorrupt):
        decode_snapshot(assemble(header, index, records), TID)


# --------------------------------------------------------------------------- properties

printable_id_chars = st.characters(exclude_categories=("C", "Z"))


def _is_valid_message_id(candidate: str) -> bool:
    try:
        validate_message_id(candidate)
    except InvalidMessage:
        return False
    return True


message_ids = st.text(printable_id_chars, min_size=1, max_size=12).filter(_is_valid_message_id)
thread_ids = st.from_regex(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,40}", fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
optional_text = st.none() | st.text(min_size=1, max_size=20)
millis = st.integers(min_value=0, max_value=2**53)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    all_ids = draw(st.lists(message_ids, unique=True, max_size=12))
    split = draw(st.integers(min_value=0, max_value=len(all_ids)))
    ids, retired = all_ids[:split], all_ids[split:]
    bodies = draw(st.lists(json_values, min_size=len(ids), max_size=len(ids)))
    return Snapshot(
        thread_id=draw(thread_ids),
        namespace=draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,20}", fullmatch=True)),
        version=draw(st.integers(min_value=0, max_value=2**63)),
        epoch=draw(st.text(max_size=20)),
        created_ms=draw(millis),
        updated_ms=draw(millis),
        parent=draw(st.none() | thread_ids),
        fork_point=draw(st.none() | message_ids),
        creator=draw(optional_text),
        state=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        ids=tuple(ids),
        records=tuple(record(i, b) for i, b in zip(ids, bodies, strict=True)),
        retired_ids=tuple(retired),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshot=snapshots(), compression=st.sampled_from(COMPRESSIONS))
def test_random_snapshots_round_trip_exactly(snapshot: Snapshot, compression: Compression) -> None:
    decoded = decode_snapshot(encode_snapshot(snapshot, compression), snapshot.thread_id)

    assert decoded == snapshot
    assert decoded.records == snapshot.records
    assert [m["id"] for m in decoded.messages()] == list(snapshot.ids)


def _compressed(raw: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return raw.map(gzip_bytes) | raw.map(zstandard.ZstdCompressor().compress)


_snapshot_like_text = st.lists(
    st.sampled_from(
        [
            b'{"format":"agent-threads/snapshot","schema":1,"thread_id":"thread-1"}',
            b'{"state":{},"ids":["m0"],"retired_ids":[]}',
            b'{"id":"m0","body":1}',
            b"{}",
            b"[",
            b"\xff",
        ]
    )
    | st.binary(max_size=20),
    max_size=5,
).map(b"\n".join)

arbitrary_objects = (
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"\x1f\x8b" + b)
    | st.binary(max_size=300).map(lambda b: b"\x28\xb5\x2f\xfd" + b)
    | _compressed(st.binary(max_size=300))
    | _compressed(_snapshot_like_text)
)


@settings(max_examples=400, deadline=None)
@given(data=arbitrary_objects)
def test_arbitrary_bytes_decode_or_raise_only_snapshot_corrupt(data: bytes) -> None:
    try:
        decoded = decode_snapshot(data, TID, max_bytes=100_000)
    except SnapshotCorrupt:
        return
    assert isinstance(decoded, Snapshot)
    assert decoded.thread_id == TID


@settings(max_examples=200, deadline=None)
@given(
    snapshot=snapshots(),
    position=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_random_byte_corruption_of_gzip_never_yields_a_different_snapshot(
    snapshot: Snapshot, position: int, mask: int
) -> None:
    blob = bytearray(encode_snapshot(snapshot, "gzip"))
    blob[position % len(blob)] ^= mask

    try:
        decoded = decode_snapshot(bytes(blob), snapshot.thread_id)
    except SnapshotCorrupt:
        return
    assert decoded == snapshot

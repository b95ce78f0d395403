"""CBP/1 codec: the specification's test vectors (CBP/1 §5), CRC, field types,
message BODY checks and single frames."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from protocol.cloudboard import (
    CRC16_MODBUS_CHECK,
    FIRMWARE_URL_MAX,
    MESSAGE_CLASSES,
    AuthMethod,
    AuthRequest,
    BadFrameReason,
    BodyError,
    CbpError,
    Display,
    FieldError,
    FirmwareStatus,
    FirmwareStatusCode,
    FirmwareUpdate,
    Frame,
    FrameError,
    GunStatus,
    Heartbeat,
    HeartbeatAck,
    Kind,
    Login,
    LoginRejectReason,
    LoginReply,
    LoginResult,
    MessageType,
    Network,
    PileState,
    RealtimeData,
    RemoteStart,
    StopReason,
    TransactionRecord,
    UnknownTypeError,
    WhitelistAction,
    WhitelistEntry,
    WhitelistMode,
    WhitelistUpdate,
    body_size,
    check_crc,
    crc16_modbus,
    decode_ascii,
    decode_bcd,
    decode_body,
    decode_frame,
    decode_gun,
    decode_message,
    decode_pile,
    decode_serial,
    decode_time,
    encode_ascii,
    encode_bcd,
    encode_body,
    encode_frame,
    encode_gun,
    encode_message,
    encode_pile,
    encode_raw,
    encode_reply,
    encode_reply_message,
    encode_serial,
    encode_time,
    encode_token,
    encode_u8,
    encode_u16,
    encode_u32,
    is_from_charger,
    make_serial,
    parse_serial,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(" ".join(text.split()))


# --------------------------------------------------------------------------
# CBP/1 §5 test vectors, byte for byte

PILE = "44200000010000100001"
SERVER_TIME = datetime(2021, 5, 27, 14, 20)

LOGIN_BYTES = hexbytes(
    """
    68 55 01 00 00 01 44 20 00 00 01 00 00 10 00 01 01 01 0A 44 4C 48 5F 58 44 33
    32 45 5F 32 30 31 31 31 30 30 30 32 00 00 00 00 00 58 44 33 32 45 00 00 00 00
    00 00 00 00 00 00 00 00 89 86 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00
    00 00 00 00 00 00 00 00 00 11 E6
    """
)
LOGIN = Login(
    pile=PILE,
    kind=Kind.AC,
    gun_count=1,
    protocol_version=10,
    firmware_version="DLH_XD32E_201110002",
    model="XD32E",
    network=Network.CELLULAR,
    iccid="89860000000000000000",
    display=Display.TOUCH_SCREEN,
    auth_key="",
)
LOGIN_REPLY_BYTES = hexbytes(
    "68 18 01 00 00 02 44 20 00 00 01 00 00 10 00 01 00 00 0A 00 00 14 0E 9B 05 15 8A 14"
)
LOGIN_REPLY = LoginReply(
    pile=PILE,
    result=LoginResult.ACCEPTED,
    reason=LoginRejectReason.NONE,
    heartbeat_interval=10,
    server_time=SERVER_TIME,
)
HEARTBEAT_BYTES = hexbytes("68 0F 02 00 00 03 44 20 00 00 01 00 00 10 00 01 00 92 B1")
HEARTBEAT = Heartbeat(pile=PILE, pile_state=PileState.NORMAL)
HEARTBEAT_ACK_BYTES = hexbytes("68 0F 02 00 00 04 44 20 00 00 01 00 00 10 00 01 00 67 7A")
HEARTBEAT_ACK = HeartbeatAck(pile=PILE)
REJECTED_LOGIN_REPLY_BYTES = hexbytes(
    "68 18 01 00 00 02 00 00 44 20 00 00 01 10 00 01 01 02 00 00 00 14 0E 9B 05 15 BA 3C"
)
REJECTED_LOGIN_REPLY = LoginReply(
    # The 16-digit ID 4420000001100001 zero-padded on the left to 20 digits:
    # carried as is, the GB/T rules are the gateway's business.
    pile="00004420000001100001",
    result=LoginResult.REJECTED,
    reason=LoginRejectReason.INVALID_PILE_ID,
    heartbeat_interval=0,
    server_time=SERVER_TIME,
)

VECTORS = [
    pytest.param(LOGIN_BYTES, 1, LOGIN, id="login"),
    pytest.param(LOGIN_REPLY_BYTES, 1, LOGIN_REPLY, id="login-reply-accepted"),
    pytest.param(HEARTBEAT_BYTES, 2, HEARTBEAT, id="heartbeat"),
    pytest.param(HEARTBEAT_ACK_BYTES, 2, HEARTBEAT_ACK, id="heartbeat-ack"),
    pytest.param(REJECTED_LOGIN_REPLY_BYTES, 1, REJECTED_LOGIN_REPLY, id="login-reply-16-digit"),
]


@pytest.mark.parametrize(("wire", "seq", "message"), VECTORS)
def test_vector_encodes_byte_exact(wire: bytes, seq: int, message: object) -> None:
    assert encode_message(seq, message) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(("wire", "seq", "message"), VECTORS)
def test_vector_decodes(wire: bytes, seq: int, message: object) -> None:
    frame = decode_frame(wire)
    assert frame == Frame(
        seq=seq,
        seq_bytes=seq.to_bytes(2, "little"),
        enc=0,
        type=wire[5],
        body=wire[6:-2],
        crc_order="lo_first",
    )
    assert frame.size == len(wire)
    assert decode_message(frame) == message
    assert decode_body(frame.type, frame.body) == message


def test_replies_echo_the_request_seq() -> None:
    login = decode_frame(LOGIN_BYTES)
    assert encode_reply_message(login.seq_bytes, LOGIN_REPLY) == LOGIN_REPLY_BYTES
    assert encode_reply_message(login.seq_bytes, REJECTED_LOGIN_REPLY) == REJECTED_LOGIN_REPLY_BYTES
    heartbeat = decode_frame(HEARTBEAT_BYTES)
    assert encode_reply_message(heartbeat.seq_bytes, HEARTBEAT_ACK) == HEARTBEAT_ACK_BYTES


def test_vector_details() -> None:
    # CBP/1 §5: 16-digit ID sent zero-padded as 00 00 44 20 00 00 01 10 00 01.
    assert encode_pile("00004420000001100001") == hexbytes("00 00 44 20 00 00 01 10 00 01")
    # 2021-05-27 is a Thursday: ISO weekday 4 in bits 5-7 of the day byte (0x9B).
    assert encode_time(SERVER_TIME) == hexbytes("00 00 14 0E 9B 05 15")
    assert len(LOGIN_BYTES) == 2 + 0x55 + 2 and body_size(MessageType.LOGIN) == 81


# --------------------------------------------------------------------------
# CRC (CBP/1 §1)


def test_crc_check_value() -> None:
    assert crc16_modbus(b"123456789") == CRC16_MODBUS_CHECK == 0x4B37
    assert crc16_modbus(b"") == 0xFFFF


def test_crc_in_pieces() -> None:
    data = bytes(range(256)) * 3
    assert crc16_modbus(data[100:], crc16_modbus(data[:100])) == crc16_modbus(data)


def test_crc_matches_bitwise_definition() -> None:
    def bitwise(data: bytes) -> int:
        crc = 0xFFFF
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        return crc

    for data in (b"", b"\x00", b"\xff" * 7, bytes(range(256)), LOGIN_BYTES[2:-2]):
        assert crc16_modbus(data) == bitwise(data)


def test_check_crc_orders() -> None:
    span = HEARTBEAT_BYTES[2:-2]
    assert check_crc(span, HEARTBEAT_BYTES[-2:]) == "lo_first"
    assert check_crc(span, HEARTBEAT_BYTES[-1:-3:-1]) == "hi_first"
    assert check_crc(span, b"\x00\x00") is None


# --------------------------------------------------------------------------
# Field types (CBP/1 §2)


def test_integers_little_endian() -> None:
    assert encode_u8(0xAB) == b"\xab"
    assert encode_u16(0x1234) == b"\x34\x12"
    assert encode_u32(0x12345678) == b"\x78\x56\x34\x12"
    for encode, bad in ((encode_u8, 256), (encode_u16, 65536), (encode_u32, 1 << 32)):
        with pytest.raises(FieldError):
            encode(bad)
        with pytest.raises(FieldError):
            encode(-1)


def test_bcd() -> None:
    assert encode_bcd("0123", 2) == b"\x01\x23"
    assert decode_bcd(b"\x01\x23") == "0123"
    with pytest.raises(FieldError, match="nibble greater than 9"):
        decode_bcd(b"\x1a")
    with pytest.raises(FieldError, match="nibble greater than 9"):
        decode_bcd(b"\xf1")
    for bad in ("012", "01234", "01a3", "01²3", "-123"):
        with pytest.raises(FieldError):
            encode_bcd(bad, 2)


def test_ascii() -> None:
    assert encode_ascii("XD32E", 8) == b"XD32E\x00\x00\x00"
    assert decode_ascii(b"XD32E\x00\x00\x00") == "XD32E"
    assert decode_ascii(b"\x00" * 4) == ""
    assert decode_ascii(b"ABCD") == "ABCD"
    with pytest.raises(FieldError, match="after its NUL padding"):
        decode_ascii(b"AB\x00C")
    with pytest.raises(FieldError, match="above 0x7F"):
        decode_ascii(b"AB\xc3\xa9")
    with pytest.raises(FieldError, match="ASCII only"):
        encode_ascii("café", 8)
    with pytest.raises(FieldError, match="at most 4"):
        encode_ascii("ABCDE", 4)
    with pytest.raises(FieldError, match="NUL"):
        encode_ascii("A\x00B", 4)
    assert len(encode_token("LSVAU2A37N2183294")) == 20  # a VIN is 17 characters


def test_pile_and_gun() -> None:
    assert decode_pile(encode_pile(PILE)) == PILE
    for bad in ("4420000001100001", "4420000001000010000a", "442000000100001000011"):
        with pytest.raises(FieldError):
            encode_pile(bad)
    assert encode_gun(2) == b"\x00\x02"
    assert encode_gun(999) == b"\x09\x99"
    assert decode_gun(b"\x00\x02") == 2
    for bad_gun in (0, 1000, -1):
        with pytest.raises(FieldError):
            encode_gun(bad_gun)
    for bad_bytes in (b"\x00\x00", b"\x10\x00", b"\x00\x0a"):
        with pytest.raises(FieldError):
            decode_gun(bad_bytes)


def test_serial() -> None:
    serial = make_serial(PILE, 2, datetime(2021, 5, 27, 14, 20, 5), 17)
    assert serial == PILE + "0002" + "210527142005" + "0017"
    assert decode_serial(encode_serial(serial)) == serial
    parts = parse_serial(serial)
    assert (parts.pile, parts.gun, parts.time, parts.counter) == (
        PILE,
        2,
        datetime(2021, 5, 27, 14, 20, 5),
        17,
    )
    assert parse_serial(make_serial(PILE, 1, datetime(2099, 12, 31), 0)).time.year == 2099
    assert encode_serial(None) == bytes(20)
    assert decode_serial(bytes(20)) is None
    with pytest.raises(FieldError, match="pass None"):
        encode_serial("0" * 40)
    with pytest.raises(FieldError):
        encode_serial("1" * 39)
    with pytest.raises(FieldError, match="nibble"):
        decode_serial(b"\x0f" + bytes(19))
    with pytest.raises(FieldError, match="gun"):
        parse_serial(PILE + "0000" + "210527142005" + "0001")
    with pytest.raises(FieldError, match="yyMMddHHmmss"):
        parse_serial(PILE + "0001" + "211327142005" + "0001")
    with pytest.raises(FieldError):
        make_serial(PILE, 1, datetime(1999, 12, 31), 0)
    with pytest.raises(FieldError):
        make_serial(PILE, 1, datetime(2021, 1, 1), 10000)
    with pytest.raises(FieldError):
        make_serial(PILE[:-1], 1, datetime(2021, 1, 1), 1)
    with pytest.raises(FieldError):
        make_serial(PILE, 1000, datetime(2021, 1, 1), 1)
    with pytest.raises(FieldError, match="naive"):
        make_serial(PILE, 1, datetime(2021, 1, 1, tzinfo=UTC), 1)
    with pytest.raises(FieldError):
        parse_serial("12345")


def test_time_roundtrip_and_layout() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, 999_000)
    raw = encode_time(when)
    assert raw[0] | raw[1] << 8 == 59_999
    assert raw[2:] == bytes((59, 23, 29 | (when.isoweekday() << 5), 2, 24))
    assert decode_time(raw) == when
    # Below a millisecond is truncated: the unit of CP56Time2a.
    assert decode_time(encode_time(datetime(2021, 5, 27, 14, 20, 0, 1999))) == datetime(
        2021, 5, 27, 14, 20, 0, 1000
    )
    assert decode_time(encode_time(datetime(2000, 1, 1))) == datetime(2000, 1, 1)
    assert decode_time(encode_time(datetime(2127, 12, 31, 23, 59))) == datetime(
        2127, 12, 31, 23, 59
    )


def test_time_weekday_zero_is_accepted() -> None:
    raw = bytearray(encode_time(SERVER_TIME))
    raw[4] &= 0x1F
    assert decode_time(bytes(raw)) == SERVER_TIME


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (1, 0xEB, "milliseconds"),  # 0xEB00 = 60160
        (2, 60, "not a valid date"),  # minute 60
        (2, 0x80 | 20, "IV"),  # IEC 60870-5-4 "invalid" flag
        (2, 0x40 | 20, "reserved"),
        (3, 24, "not a valid date"),  # hour 24
        (3, 0x80 | 14, "SU"),  # summer time flag
        (4, (4 << 5) | 0, "not a valid date"),  # day 0
        (4, (3 << 5) | 27, "weekday 3"),  # 2021-05-27 is a Thursday (4)
        (5, 13, "not a valid date"),
        (5, 0x10 | 5, "reserved"),
        (6, 0x80 | 21, "reserved"),
    ],
)
def test_time_invalid_fields(index: int, value: int, match: str) -> None:
    raw = bytearray(encode_time(SERVER_TIME))
    raw[index] = value
    with pytest.raises(FieldError, match=match):
        decode_time(bytes(raw))


def test_time_invalid_date() -> None:
    with pytest.raises(FieldError, match="not a valid date"):
        decode_time(bytes((0, 0, 0, 0, 30, 2, 21)))  # 2021-02-30
    with pytest.raises(FieldError, match="7 bytes"):
        decode_time(bytes(6))


def test_time_encode_refusals() -> None:
    with pytest.raises(FieldError, match="naive"):
        encode_time(datetime(2021, 5, 27, tzinfo=UTC))
    with pytest.raises(FieldError, match="year"):
        encode_time(datetime(1999, 12, 31))
    with pytest.raises(FieldError, match="year"):
        encode_time(datetime(2128, 1, 1))


# --------------------------------------------------------------------------
# Messages (CBP/1 §3)


EXPECTED_SIZES = {
    0x01: 81, 0x02: 20, 0x03: 11, 0x04: 11, 0x12: 12, 0x13: 59, 0x31: 33, 0x32: 53,
    0x33: 14, 0x34: 56, 0x35: 14, 0x36: 32, 0x3B: 81, 0x40: 21, 0x43: 16, 0x44: None,
    0x47: 18, 0x48: 10, 0x55: 17, 0x56: 17, 0x91: 11, 0x92: 11, 0x93: 15, 0x94: None,
    0x95: 16, 0x96: 14,
}  # fmt: skip


def test_every_type_of_the_specification_with_its_size() -> None:
    assert set(MESSAGE_CLASSES) == set(EXPECTED_SIZES) == {int(t) for t in MessageType}
    for message_type, size in EXPECTED_SIZES.items():
        assert body_size(message_type) == size, hex(message_type)
        assert message_type == MESSAGE_CLASSES[message_type].TYPE
        assert is_from_charger(message_type) == bool(message_type & 1)


def test_unknown_type() -> None:
    with pytest.raises(UnknownTypeError):
        decode_body(0x05, b"")
    with pytest.raises(UnknownTypeError):
        body_size(0xFF)


def test_wrong_body_size() -> None:
    body = encode_body(LOGIN)
    with pytest.raises(BodyError, match="Login BODY must be 81 bytes, got 80"):
        decode_body(0x01, body[:-1])
    with pytest.raises(BodyError, match="got 82"):
        decode_body(0x01, body + b"\x00")


def test_body_field_errors_name_the_field() -> None:
    body = bytearray(encode_body(LOGIN))
    body[10] = 3  # kind
    with pytest.raises(BodyError, match=r"Login\.kind: 3 is not a Kind") as info:
        decode_body(0x01, bytes(body))
    assert info.value.field == "kind"
    assert info.value.message_type == 0x01
    body = bytearray(encode_body(LOGIN))
    body[0] = 0x4A  # BCD nibble > 9 in the pile ID
    with pytest.raises(BodyError, match=r"Login\.pile"):
        decode_body(0x01, bytes(body))


def test_login_passes_open_values_through() -> None:
    # Protocol version and gun count are the gateway's to judge (reason 4 etc.).
    odd = Login(
        pile="00004420000001100001",
        kind=Kind.DC,
        gun_count=0,
        protocol_version=99,
        firmware_version="",
        model="M" * 16,
        network=Network.OTHER,
        iccid=None,
        display=Display.NONE,
        auth_key="k" * 16,
    )
    body = encode_body(odd)
    assert body[54:65] == bytes(11)  # ICCID zeros + display 0
    assert decode_body(0x01, body) == odd
    with pytest.raises(FieldError, match="pass None") as info:
        encode_body(replace(odd, iccid="0" * 20))
    assert info.value.field == "iccid"


def test_heartbeat_ack_reserved_byte() -> None:
    body = encode_body(HEARTBEAT_ACK)
    assert body[-1] == 0
    with pytest.raises(BodyError, match="reserved"):
        decode_body(0x04, body[:-1] + b"\x01")


def realtime(**changes: object) -> RealtimeData:
    base: dict[str, object] = {
        "pile": PILE,
        "gun": 1,
        "status": GunStatus.CHARGING,
        "serial": make_serial(PILE, 1, datetime(2021, 5, 27, 14, 20), 1),
        "voltage_dv": 2201,
        "current_da": 320,
        "power_w": 7040,
        "meter_wh": 123_456,
        "session_energy_wh": 5_000,
        "soc": None,
        "fault_code": 0,
        "sample_time": SERVER_TIME,
    }
    base.update(changes)
    return RealtimeData(**base)  # type: ignore[arg-type]


def test_realtime_soc_and_status() -> None:
    assert encode_body(realtime())[49] == 0xFF  # SoC unknown
    assert decode_body(0x13, encode_body(realtime(soc=80))) == realtime(soc=80)
    assert decode_body(0x13, encode_body(realtime(serial=None))) == realtime(serial=None)
    body = bytearray(encode_body(realtime()))
    body[49] = 101
    with pytest.raises(BodyError, match="SoC"):
        decode_body(0x13, bytes(body))
    body = bytearray(encode_body(realtime()))
    body[12] = 8  # gun status
    with pytest.raises(BodyError, match="GunStatus"):
        decode_body(0x13, bytes(body))
    with pytest.raises(FieldError, match="SoC") as info:
        encode_body(realtime(soc=101))
    assert info.value.field == "soc"
    with pytest.raises(FieldError):
        encode_body(realtime(voltage_dv=70000))


def test_auth_request_method_is_card_vin_or_password() -> None:
    request = AuthRequest(pile=PILE, gun=1, method=AuthMethod.CARD, token="04A1B2C3")
    body = bytearray(encode_body(request))
    assert decode_body(0x31, bytes(body)) == request
    body[12] = AuthMethod.REMOTE
    with pytest.raises(BodyError, match="AuthMethod"):
        decode_body(0x31, bytes(body))
    with pytest.raises(FieldError):
        encode_body(AuthRequest(pile=PILE, gun=1, method=AuthMethod.REMOTE, token="x"))


def record(**changes: object) -> TransactionRecord:
    base: dict[str, object] = {
        "serial": make_serial(PILE, 1, datetime(2021, 5, 27, 14, 20), 1),
        "pile": PILE,
        "gun": 1,
        "start_time": datetime(2021, 5, 27, 14, 20),
        "stop_time": datetime(2021, 5, 27, 15, 20),
        "meter_start_wh": 100,
        "meter_stop_wh": 7100,
        "energy_wh": 7000,
        "auth_method": AuthMethod.PASSWORD,
        "offline": True,
        "token": "123456",
        "stop_reason": StopReason.EV_FULL,
    }
    base.update(changes)
    return TransactionRecord(**base)  # type: ignore[arg-type]


def test_transaction_record() -> None:
    body = encode_body(record())
    assert len(body) == 81
    assert decode_body(0x3B, body) == record()
    bad = bytearray(body)
    bad[59] = 2  # offline flag
    with pytest.raises(BodyError, match="offline"):
        decode_body(0x3B, bytes(bad))
    bad = bytearray(body)
    bad[80] = 10  # stop reason
    with pytest.raises(BodyError, match="StopReason"):
        decode_body(0x3B, bytes(bad))
    with pytest.raises(BodyError, match="serial is required"):
        decode_body(0x3B, bytes(20) + body[20:])
    with pytest.raises(FieldError, match="required"):
        encode_body(record(serial=None))


def test_remote_start_needs_a_serial() -> None:
    start = RemoteStart(
        pile=PILE, gun=2, serial=make_serial(PILE, 2, SERVER_TIME, 9), token="app-user-1",
        energy_limit_wh=0,
    )  # fmt: skip
    body = encode_body(start)
    assert len(body) == 56 and decode_body(0x34, body) == start
    with pytest.raises(BodyError, match="serial"):
        decode_body(0x34, body[:12] + bytes(20) + body[32:])


def whitelist(count: int) -> WhitelistUpdate:
    return WhitelistUpdate(
        pile=PILE,
        version=7,
        base_version=6,
        mode=WhitelistMode.DIFFERENTIAL,
        part=0,
        last=True,
        entries=tuple(
            WhitelistEntry(WhitelistAction.ADD, AuthMethod.CARD, f"CARD{i:04d}")
            for i in range(count)
        ),
    )


def test_whitelist_update_sizes() -> None:
    for count in (0, 1, 10):
        body = encode_body(whitelist(count))
        assert len(body) == 22 + 22 * count
        assert body[21] == count
        assert decode_body(0x44, body) == whitelist(count)
    with pytest.raises(FieldError, match="at most 10"):
        encode_body(whitelist(11))
    body = encode_body(whitelist(2))
    with pytest.raises(BodyError, match="count 2 needs a body of 66 bytes, got 65"):
        decode_body(0x44, body[:-1])
    with pytest.raises(BodyError, match="count 2 needs a body of 66 bytes, got 67"):
        decode_body(0x44, body + b"\x00")
    too_many = bytearray(encode_body(whitelist(10)))
    too_many[21] = 11
    with pytest.raises(BodyError, match=r"count must be 0\.\.10"):
        decode_body(0x44, bytes(too_many) + bytes(22))
    bad_method = bytearray(body)
    bad_method[23] = 0  # entry 0 auth method: remote is not a whitelist method
    with pytest.raises(BodyError, match="entry 0"):
        decode_body(0x44, bytes(bad_method))
    with pytest.raises(BodyError, match="at least 22"):
        decode_body(0x44, body[:21])
    remote = WhitelistEntry(WhitelistAction.ADD, AuthMethod.REMOTE, "x")
    with pytest.raises(FieldError, match="entry 0"):
        encode_body(replace(whitelist(0), entries=(remote,)))


def firmware(url: str) -> FirmwareUpdate:
    return FirmwareUpdate(
        pile=PILE,
        task_id=300,
        target_version="DLH_XD32E_210521003",
        sha256=bytes(range(32)),
        image_size=1_048_576,
        url=url,
    )


def test_firmware_update_url() -> None:
    url = "https://fw.example.com/DLH_XD32E_210521003.bin"
    body = encode_body(firmware(url))
    assert len(body) == 75 + len(url)
    assert body[74] == len(url)
    assert decode_body(0x94, body) == firmware(url)
    longest = "http://" + "a" * (FIRMWARE_URL_MAX - 7)
    assert len(encode_body(firmware(longest))) == 251
    for bad in (
        "ftp://fw.example.com/x.bin",
        "HTTP://fw.example.com/x.bin",
        "https://",
        "http://a b",
        "http://" + "a" * (FIRMWARE_URL_MAX - 6),
    ):
        with pytest.raises(FieldError):
            encode_body(firmware(bad))
    with pytest.raises(BodyError, match="needs a body of"):
        decode_body(0x94, body[:-1])
    with pytest.raises(BodyError, match="needs a body of"):
        decode_body(0x94, body + b"x")
    with pytest.raises(BodyError, match="above 0x7F"):
        decode_body(0x94, body[:-1] + b"\xe9")
    with pytest.raises(FieldError, match="32 bytes"):
        encode_body(
            FirmwareUpdate(
                pile=PILE, task_id=1, target_version="v", sha256=b"short", image_size=1, url=url
            )
        )


def test_firmware_status_progress() -> None:
    status = FirmwareStatus(
        pile=PILE, task_id=300, status=FirmwareStatusCode.INSTALLED, progress=100
    )
    body = encode_body(status)
    assert decode_body(0x95, body) == status
    with pytest.raises(BodyError, match=r"0\.\.100"):
        decode_body(0x95, body[:-1] + b"\x65")
    with pytest.raises(BodyError, match="FirmwareStatusCode"):
        decode_body(0x95, body[:-2] + b"\x00\x00")


def test_encode_body_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_body(object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Single frames (CBP/1 §1)


def test_encode_frame_layout() -> None:
    wire = encode_frame(0x1234, 0x03, b"\xaa\xbb")
    assert wire[:6] == bytes((0x68, 6, 0x34, 0x12, 0x00, 0x03))
    crc = crc16_modbus(wire[2:-2])
    assert wire[-2:] == bytes((crc & 0xFF, crc >> 8))
    assert decode_frame(wire).seq == 0x1234


def test_reply_echoes_seq_bytes_as_received() -> None:
    # A charger that writes SEQ high byte first: the reply carries the same two bytes.
    request = decode_frame(encode_raw(b"\x00\x07", 0x03, encode_body(HEARTBEAT)))
    assert request.seq == 0x0700
    reply = decode_frame(encode_reply(request.seq_bytes, 0x04, encode_body(HEARTBEAT_ACK)))
    assert reply.seq_bytes == b"\x00\x07"


def test_encode_frame_limits() -> None:
    assert len(encode_frame(0, 0x94, bytes(251))) == 259
    with pytest.raises(CbpError):
        encode_frame(0, 0x94, bytes(252))
    with pytest.raises(CbpError):
        encode_frame(65536, 0x03, b"")
    with pytest.raises(CbpError):
        encode_frame(0, 256, b"")
    with pytest.raises(CbpError):
        encode_reply(b"\x01", 0x04, b"")
    with pytest.raises(CbpError):
        encode_raw(b"\x00\x00", 0x03, b"", enc=256)


def test_decode_frame_hi_first_crc() -> None:
    wire = encode_raw(b"\x02\x00", 0x03, encode_body(HEARTBEAT), crc_order="hi_first")
    assert wire[-2:] == HEARTBEAT_BYTES[-1:-3:-1]
    frame = decode_frame(wire)
    assert frame.crc_order == "hi_first"
    assert decode_message(frame) == HEARTBEAT


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", BadFrameReason.NO_START),
        (b"\x69" + HEARTBEAT_BYTES[1:], BadFrameReason.NO_START),
        (b"\x68", BadFrameReason.TRUNCATED),
        (b"\x68\x03\x00\x00\x00\x00\x00", BadFrameReason.LEN_TOO_SMALL),
        (HEARTBEAT_BYTES[:-1], BadFrameReason.TRUNCATED),
        (HEARTBEAT_BYTES + b"\x00", BadFrameReason.LENGTH_MISMATCH),
        (HEARTBEAT_BYTES[:-1] + b"\x00", BadFrameReason.BAD_CRC),
    ],
)
def test_decode_frame_errors(wire: bytes, reason: BadFrameReason) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(wire)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (encode_raw(b"\x01\x00", 0x03, encode_body(HEARTBEAT), enc=1), BadFrameReason.ENCRYPTED),
        (encode_raw(b"\x01\x00", 0x03, encode_body(HEARTBEAT), enc=7), BadFrameReason.UNKNOWN_ENC),
        (encode_raw(b"\x01\x00", 0x05, b"hello"), BadFrameReason.UNKNOWN_TYPE),
        (encode_raw(b"\x01\x00", 0x03, b"\x00" * 10), BadFrameReason.UNDECODABLE_BODY),
    ],
)
def test_decode_message_errors(wire: bytes, reason: BadFrameReason) -> None:
    frame = decode_frame(wire)
    with pytest.raises(FrameError) as info:
        decode_message(frame)
    assert info.value.reason is reason
    assert info.value.reason.counts_as_bad is (reason is not BadFrameReason.UNKNOWN_TYPE)

"""FIX tag numbers and fixed values used by fixproxy."""

from __future__ import annotations

from typing import Final

SOH: Final = b"\x01"
BEGIN_STRING_FIXT11: Final = b"FIXT.1.1"

BEGIN_STRING: Final = 8
BODY_LENGTH: Final = 9
CHECKSUM: Final = 10
MSG_TYPE: Final = 35
SENDER_COMP_ID: Final = 49
TARGET_COMP_ID: Final = 56
MSG_SEQ_NUM: Final = 34
SENDING_TIME: Final = 52
POSS_DUP_FLAG: Final = 43
POSS_RESEND: Final = 97
ORIG_SENDING_TIME: Final = 122
TEXT: Final = 58
TEST_REQ_ID: Final = 112
BEGIN_SEQ_NO: Final = 7
END_SEQ_NO: Final = 16
NEW_SEQ_NO: Final = 36
REF_SEQ_NUM: Final = 45
REF_MSG_TYPE: Final = 372
SESSION_REJECT_REASON: Final = 373
BUSINESS_REJECT_REASON: Final = 380
GAP_FILL_FLAG: Final = 123
NEXT_EXPECTED_MSG_SEQ_NUM: Final = 789

ENCRYPT_METHOD: Final = 98
HEART_BT_INT: Final = 108
RAW_DATA_LENGTH: Final = 95
RAW_DATA: Final = 96
RESET_SEQ_NUM_FLAG: Final = 141
DEFAULT_APPL_VER_ID: Final = 1137
USERNAME: Final = 553
PASSWORD: Final = 554
NEW_PASSWORD: Final = 925

# Kalshi Logon flags.
CANCEL_ORDERS_ON_DISCONNECT: Final = 8013
LISTENER_SESSION: Final = 20126
RECEIVE_SETTLEMENT_REPORTS: Final = 20127
MESSAGE_RETENTION_PERIOD: Final = 20200
USE_DOLLARS: Final = 21005
SKIP_PENDING_EXEC_REPORTS: Final = 21011

# Data fields whose value may contain SOH: value tag -> the length tag that precedes it.
LENGTH_OF: Final[dict[int, int]] = {
    RAW_DATA: RAW_DATA_LENGTH,
    89: 93,      # Signature / SignatureLength
    91: 90,      # SecureData / SecureDataLen
    213: 212,    # XmlData / XmlDataLen
    349: 348,    # EncodedIssuer
    351: 350,    # EncodedSecurityDesc
    355: 354,    # EncodedText
}

# Standard header tags (FIXT.1.1) other than 8, 9 and 35; kept ahead of the body on re-encode.
HEADER_TAGS: Final = frozenset({
    49, 56, 115, 128, 90, 91, 34, 50, 142, 57, 143, 116, 144, 129, 145, 43, 97, 52, 122,
    212, 213, 347, 369, 627, 628, 629, 630, 1128, 1129, 1156,
})

# Fields never written to a log or a transcript.
SECRET_TAGS: Final = frozenset({RAW_DATA, PASSWORD, NEW_PASSWORD, 89, 91})

# MsgType values (as bytes, as they appear on the wire).
MT_HEARTBEAT: Final = b"0"
MT_TEST_REQUEST: Final = b"1"
MT_RESEND_REQUEST: Final = b"2"
MT_REJECT: Final = b"3"
MT_SEQUENCE_RESET: Final = b"4"
MT_LOGOUT: Final = b"5"
MT_EXECUTION_REPORT: Final = b"8"
MT_NEW_ORDER_SINGLE: Final = b"D"
MT_LOGON: Final = b"A"
MT_BUSINESS_REJECT: Final = b"j"

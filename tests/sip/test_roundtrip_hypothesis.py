"""Property tests: parse(serialise(m)) == m, and malformed input only raises SipParseError."""

from __future__ import annotations

import contextlib
import ipaddress
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipushd.sip import (
    CSeq,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    StreamParser,
    Via,
    parse_message,
    parse_uri,
)
from tests.sip.samples import INVITE, OPTIONS, REGISTER, RESPONSE

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
token = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_token = token.map(str.lower)
# Printable text as it may appear in a header value (no controls, no CR/LF).
printable = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)
# Anything, for URI parts that are %-escaped on output.
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)

hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: f"[{ipaddress.IPv6Address(n).compressed}]")
host = st.one_of(hostname, ipv4, ipv6)
port = st.none() | st.integers(0, 65535)
param_name = st.text(
    string.ascii_lowercase + string.digits + "-_.!~*'()[]/:&+$% é;=", min_size=1, max_size=8
)
uri_params = st.lists(st.tuples(param_name, st.none() | any_text), max_size=4).map(tuple)
uri_headers = st.lists(st.tuples(any_text.filter(bool), any_text), max_size=3).map(tuple)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    scheme = draw(st.sampled_from(["sip", "sips"]))
    user = draw(st.none() | any_text.filter(bool))
    password = draw(st.none() | any_text) if user is not None else None
    return SipUri(
        scheme, user, password, draw(host), draw(port), draw(uri_params), draw(uri_headers)
    )


tel_uris = st.builds(
    lambda user, params: SipUri("tel", user, params=params), any_text.filter(bool), uri_params
)
other_uris = st.builds(
    lambda scheme, opaque: SipUri(scheme, opaque=opaque),
    st.from_regex(r"[a-z][a-z0-9+.\-]{0,6}", fullmatch=True).filter(
        lambda s: s not in ("sip", "sips", "tel")
    ),
    st.text(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%", min_size=1),
)
uris = st.one_of(sip_uris(), sip_uris(), tel_uris, other_uris)

quoted = printable.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
# q, expires and reg-id have a defined syntax on Contact (tested elsewhere).
header_param_name = lower_token.filter(lambda n: n not in ("q", "expires", "reg-id"))
header_params = st.lists(st.tuples(header_param_name, st.none() | token | quoted), max_size=4).map(
    tuple
)
name_addrs = st.builds(NameAddr, st.none() | printable, uris, header_params)
vias = st.builds(
    Via,
    token.map(str.upper),
    host,
    port,
    st.lists(st.tuples(lower_token, st.none() | token), max_size=3).map(tuple),
)
call_ids = st.text(string.ascii_letters + string.digits + "-.!%*_+`'~()<>:\\\"/[]?{}@", min_size=1)
extra = st.lists(
    st.tuples(token.map(lambda t: "X-" + t), printable.map(lambda s: s.strip(" \t"))),
    max_size=5,
)
bodies = st.binary(max_size=200)


@st.composite
def base_headers(draw: st.DrawFn, method: str) -> list[tuple[str, str]]:
    items = [("Via", str(v)) for v in draw(st.lists(vias, min_size=1, max_size=3))]
    items += [
        ("From", str(draw(name_addrs))),
        ("To", str(draw(name_addrs))),
        ("Call-ID", draw(call_ids)),
        ("CSeq", str(CSeq(draw(st.integers(0, 2**32 - 1)), method))),
    ]
    if draw(st.booleans()):
        items.append(("Max-Forwards", str(draw(st.integers(0, 2**32 - 1)))))
    contacts = draw(st.lists(name_addrs, max_size=2))
    if contacts:
        items.append(("Contact", ", ".join(str(c) for c in contacts)))
    items += draw(extra)
    return draw(st.permutations(items))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "MESSAGE"]) | token)
    return Request(method, draw(uris), Headers(draw(base_headers(method))), draw(bodies))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    method = draw(token)
    reason = draw(printable)
    headers = Headers(draw(base_headers(method)))
    return Response(draw(st.integers(100, 699)), reason, headers, draw(bodies))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(requests(), responses()))
def test_message_roundtrip(msg: Request | Response) -> None:
    data = msg.to_bytes()
    parsed = parse_message(data)
    assert parsed == msg
    assert parse_message(parsed.to_bytes()) == msg
    (streamed,) = StreamParser().feed(data)
    assert streamed == msg


@settings(max_examples=200, deadline=None)
@given(uris)
def test_uri_roundtrip(uri: SipUri) -> None:
    parsed = parse_uri(str(uri))
    assert parsed == uri
    assert parsed.matches(uri)


def _only_parse_errors(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    # Whatever parses must serialise to something that parses to the same message.
    assert parse_message(msg.to_bytes()) == msg
    for name in (
        "routes",
        "record_routes",
        "paths",
        "expires",
        "authorization",
        "www_authenticate",
    ):
        with contextlib.suppress(SipParseError):
            getattr(msg, name)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_parse_errors(data: bytes) -> None:
    _only_parse_errors(data)


SAMPLES = [REGISTER, INVITE, OPTIONS, RESPONSE]
# Bytes that matter to the grammar, to make mutations hit interesting places.
INTERESTING = [*b'\r\n :;,<>"@=?&%[]/\\\t\x00\xff0123456789', 0x80, 0xC3]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "dup", "cut"]))
        byte = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        if op == "insert":
            data[pos:pos] = bytes([byte])
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        elif op == "replace" and pos < len(data):
            data[pos] = byte
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 40))]
        elif op == "cut":
            del data[pos:]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutated_messages_only_raise_parse_errors(data: bytes) -> None:
    _only_parse_errors(data)


@settings(max_examples=150, deadline=None)
@given(st.lists(mutated(), min_size=1, max_size=3), st.integers(1, 400))
def test_stream_of_mutated_messages_only_raises_parse_errors(
    messages: list[bytes], chunk: int
) -> None:
    data = b"".join(messages)
    parser = StreamParser()
    try:
        for i in range(0, len(data), chunk):
            parser.feed(data[i : i + chunk])
    except SipParseError:
        pass

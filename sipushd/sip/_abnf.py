"""SIP grammar as regular expressions, each under the RFC 3261 §25 ABNF it implements.

Where real traffic needs it the regexes are a little more liberal than the ABNF;
each such place says so. Header values are matched after line unfolding, so LWS
is plain SP/HTAB here.
"""

from __future__ import annotations

import re

# LWS  =  [*WSP CRLF] 1*WSP ; linear whitespace
# SWS  =  [LWS] ; sep whitespace
# (after unfolding, only WSP is left)
SWS = r"[ \t]*"

# token       =  1*(alphanum / "-" / "." / "!" / "%" / "*"
#                / "_" / "+" / "`" / "'" / "~" )
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN)

# quoted-string  =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext         =  LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair    =  "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED_STRING = r'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
QUOTED_PAIR_RE = re.compile(r"\\(.)")

# generic-param  =  token [ EQUAL gen-value ]
# gen-value      =  token / host / quoted-string
# (liberal: an unquoted value is any run without SP, HTAB, ";", "," or DQUOTE)
GENERIC_PARAM_RE = re.compile(
    rf"{SWS};{SWS}({TOKEN})(?:{SWS}={SWS}({QUOTED_STRING}|[^ \t;,\"]+))?{SWS}"
)

# A list header element (RFC 3261 §7.3.1): commas inside quoted strings and
# <...> do not separate elements.
LIST_ELEMENT_RE = re.compile(rf'(?:[^",<]++|{QUOTED_STRING}|<[^>]*+>)*+')

# auth-param       =  auth-param-name EQUAL ( token / quoted-string )
# auth-param-name  =  token
# (liberal: an unquoted value is any run without SP, HTAB, "," or DQUOTE)
AUTH_PARAM_RE = re.compile(rf"{SWS}({TOKEN}){SWS}={SWS}({QUOTED_STRING}|[^ \t,\"]+){SWS}")
# challenge / credentials  =  auth-scheme LWS auth-param *(COMMA auth-param)
AUTH_SCHEME_RE = re.compile(rf"{SWS}({TOKEN})(?:[ \t]+|$)")

# Via-parm          =  sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol     =  protocol-name SLASH protocol-version SLASH transport
# sent-by           =  host [ COLON port ]
# host              =  hostname / IPv4address / IPv6reference
VIA_RE = re.compile(
    rf"{SWS}({TOKEN}){SWS}/{SWS}({TOKEN}){SWS}/{SWS}({TOKEN})[ \t]+"
    rf"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-.]+)(?:{SWS}:{SWS}([0-9]+))?"
)

# CSeq  =  "CSeq" HCOLON 1*DIGIT LWS Method
CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+({TOKEN})")

# Call-ID  =  ( "Call-ID" / "i" ) HCOLON callid
# callid   =  word [ "@" word ]
# (liberal: any run of visible characters)
CALL_ID_RE = re.compile(r"[!-~\x80-\U0010ffff]+")

# Request-Line  =  Method SP Request-URI SP SIP-Version CRLF
REQUEST_LINE_RE = re.compile(rf"({TOKEN}) ([^ ]+) ([^ ]+)")
# Status-Line  =  SIP-Version SP Status-Code SP Reason-Phrase CRLF
# (liberal: the SP before an empty Reason-Phrase may be missing)
STATUS_LINE_RE = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([1-6][0-9][0-9])(?: (.*))?", re.IGNORECASE)
# SIP-Version  =  "SIP" "/" 1*DIGIT "." 1*DIGIT
SIP_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)

# message-header  =  field-name HCOLON field-value CRLF ; TEXT-UTF8char / LWS
# Octets allowed in a message head: HTAB, LF, CR, SP, visible ASCII and all
# non-ASCII (UTF-8 validity is checked by decoding). Other controls are refused.
HEAD_OCTETS = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F), *range(0x80, 0x100)])


def bad_value_chars(value: str) -> bool:
    """True when `value` holds CR, LF or NUL, which a header value set from code may not."""
    # Three substring scans beat one regex search on the short values headers have.
    return "\r" in value or "\n" in value or "\x00" in value


# scheme  =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")

# hostname     =  *( domainlabel "." ) toplabel [ "." ]
# IPv4address  =  1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
# (liberal: "_" is accepted in labels; it appears in real deployments)
HOSTNAME_RE = re.compile(r"[A-Za-z0-9_\-.]+")
# IPv6reference  =  "[" IPv6address "]"
IPV6_REFERENCE_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\]")

# Characters refused in any part of a URI: whitespace, controls and the
# delimiters of name-addr / quoted-string.
BAD_URI_CHARS_RE = re.compile(r"[\x00-\x20\x7f<>\"]")

# Characters that may stay unescaped when serialising each URI part:
# unreserved      =  alphanum / mark
# mark            =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
UNRESERVED = "A-Za-z0-9\\-_.!~*'()"
# user             =  1*( unreserved / escaped / user-unreserved )
# user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
USER_SAFE = "&=+$,;?/"
# password  =  *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD_SAFE = "&=+$,"
# paramchar         =  param-unreserved / unreserved / escaped
# param-unreserved  =  "[" / "]" / "/" / ":" / "&" / "+" / "$"
PARAM_SAFE = "[]/:&+$"
# hname           =  1*( hnv-unreserved / unreserved / escaped )
# hnv-unreserved  =  "[" / "]" / "/" / "?" / ":" / "+" / "$"
HEADER_SAFE = "[]/?:+$"

USER_NEEDS_ESCAPE_RE = re.compile(rf"[^{UNRESERVED}&=+$,;?/]")
PASSWORD_NEEDS_ESCAPE_RE = re.compile(rf"[^{UNRESERVED}&=+$,]")
PARAM_NEEDS_ESCAPE_RE = re.compile(rf"[^{UNRESERVED}\[\]/:&+$]")
HEADER_NEEDS_ESCAPE_RE = re.compile(rf"[^{UNRESERVED}\[\]/?:+$]")
# telephone-subscriber (RFC 3966 §3): like user, without ";" and "?"
TEL_SAFE = "&=+$,/"
TEL_NEEDS_ESCAPE_RE = re.compile(rf"[^{UNRESERVED}&=+$,/]")

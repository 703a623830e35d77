"""Push parameters: RFC 8599 §4.1, Linphone's extension and the legacy pn-type form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipushd.core.pushparams import (
    PushParamError,
    PushTarget,
    UnsupportedProviderError,
    is_capability_query,
    parse_push_target,
)
from sipushd.sip import parse_uri

VOIP = "a" * 64
REMOTE = "b" * 64
FCM_TOKEN = "dGhpcy1pcy1hbi1pZA:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx_" + "x" * 100


def parse(**params: str | None) -> PushTarget | None:
    return parse_push_target({k.replace("_", "-"): v for k, v in params.items()})


def must_parse(**params: str | None) -> PushTarget:
    target = parse(**params)
    assert target is not None
    return target


def reason_of(**params: str | None) -> str:
    with pytest.raises(PushParamError) as info:
        parse(**params)
    return info.value.reason


# --- RFC 8599 ----------------------------------------------------------------


def test_no_push_params_is_none() -> None:
    assert parse_push_target({}) is None
    assert parse_push_target({"transport": "tcp", "ob": None}) is None


def test_rfc8599_apns_voip() -> None:
    t = must_parse(pn_provider="apns", pn_param="ABCD123456.org.example.app.voip", pn_prid=VOIP)
    assert t == PushTarget("apns", False, "org.example.app", "ABCD123456", (("voip", VOIP),))
    assert t.voip_token == VOIP
    assert t.remote_token is None
    assert t.provider_label == "apns"


def test_rfc8599_apns_without_voip_suffix_is_remote() -> None:
    t = must_parse(pn_provider="apns", pn_param="ABCD123456.org.example.app", pn_prid=REMOTE)
    assert t.app_id == "org.example.app"
    assert t.tokens == (("remote", REMOTE),)
    assert t.voip_token is None


def test_rfc8599_fcm() -> None:
    t = must_parse(pn_provider="fcm", pn_param="my-project", pn_prid=FCM_TOKEN)
    assert t == PushTarget("fcm", False, "my-project", None, (("remote", FCM_TOKEN),))
    assert t.provider_label == "fcm"


def test_fcm_token_with_remote_suffix() -> None:
    t = must_parse(pn_provider="fcm", pn_param="my-project", pn_prid=FCM_TOKEN + ":remote")
    assert t.remote_token == FCM_TOKEN


def test_fcm_token_with_voip_suffix_is_rejected() -> None:
    reason = reason_of(pn_provider="fcm", pn_param="p", pn_prid=FCM_TOKEN + ":voip")
    assert "voip" in reason and "not declared" in reason


def test_webpush_subscription_uri() -> None:
    uri = "https://push.example.net/wpush/v2/gAAAAABk:xyz?x=1"
    t = must_parse(pn_provider="webpush", pn_prid=uri)
    assert t == PushTarget("webpush", False, "", None, (("remote", uri),))
    assert t.provider_label == "webpush"


def test_webpush_prid_must_be_a_uri() -> None:
    assert "subscription URI" in reason_of(pn_provider="webpush", pn_prid="not a uri")


def test_param_names_are_case_insensitive() -> None:
    t = parse_push_target({"PN-Provider": "APNS", "pn-param": "ABCDE.org.x.voip", "PN-PRID": VOIP})
    assert t is not None and t.voip_token == VOIP


# --- Linphone's extension ------------------------------------------------------


def test_linphone_sandbox_voip_and_remote() -> None:
    t = must_parse(
        pn_provider="apns.dev",
        pn_param="ABCD123456.org.linphone.phone.voip&remote",
        pn_prid=f"{VOIP}:voip&{REMOTE}:remote",
    )
    assert t.provider == "apns" and t.sandbox
    assert t.provider_label == "apns.dev"
    assert t.app_id == "org.linphone.phone"
    assert t.team_id == "ABCD123456"
    assert t.voip_token == VOIP and t.remote_token == REMOTE


def test_linphone_token_order_differs_from_param_order() -> None:
    t = must_parse(
        pn_provider="apns",
        pn_param="ABCD123456.org.linphone.phone.voip&remote",
        pn_prid=f"{REMOTE}:remote&{VOIP}:voip",
    )
    assert t.voip_token == VOIP and t.remote_token == REMOTE
    assert t.tokens == (("voip", VOIP), ("remote", REMOTE))


def test_linphone_remote_then_voip() -> None:
    t = must_parse(
        pn_provider="apns",
        pn_param="ABCD123456.org.linphone.phone.remote&voip",
        pn_prid=f"{VOIP}:voip&{REMOTE}:remote",
    )
    assert t.app_id == "org.linphone.phone"
    assert t.voip_token == VOIP and t.remote_token == REMOTE


def test_single_token_without_suffix_belongs_to_the_single_service() -> None:
    t = must_parse(pn_provider="apns", pn_param="ABCD123456.org.x.app.remote", pn_prid=REMOTE)
    assert t.app_id == "org.x.app"
    assert t.tokens == (("remote", REMOTE),)


def test_single_token_with_matching_suffix() -> None:
    t = must_parse(pn_provider="apns", pn_param="ABCD123456.org.x.app.voip", pn_prid=VOIP + ":voip")
    assert t.tokens == (("voip", VOIP),)


def test_unescaped_values_from_the_uri_parser() -> None:
    # pn-prid=AAA%3Avoip%26BBB%3Aremote reaches us already unescaped.
    t = must_parse(
        pn_provider="apns", pn_param="ABCD123456.org.x.voip&remote", pn_prid="AAA:voip&BBB:remote"
    )
    assert t.tokens == (("voip", "AAA"), ("remote", "BBB"))


# --- legacy pn-type --------------------------------------------------------------


def test_legacy_apple_with_message_strings_ignored() -> None:
    t = must_parse(
        pn_type="apple",
        app_id="org.linphone.phone.prod",
        pn_tok=REMOTE,
        pn_msg_str="IM_MSG",
        pn_call_str="IC_MSG",
        pn_call_snd="ring.caf",
    )
    assert t == PushTarget("apns", False, "org.linphone.phone", None, (("remote", REMOTE),))


def test_legacy_apple_dev_voip() -> None:
    t = must_parse(pn_type="apple", app_id="org.linphone.phone.voip.dev", pn_tok=VOIP)
    assert t.sandbox and t.app_id == "org.linphone.phone"
    assert t.tokens == (("voip", VOIP),)


def test_legacy_apple_two_tokens() -> None:
    t = must_parse(
        pn_type="apple",
        app_id="org.linphone.phone.voip&remote.prod",
        pn_tok=f"{VOIP}:voip&{REMOTE}:remote",
    )
    assert t.voip_token == VOIP and t.remote_token == REMOTE


@pytest.mark.parametrize("pn_type", ["firebase", "google", "Firebase"])
def test_legacy_firebase(pn_type: str) -> None:
    t = must_parse(pn_type=pn_type, app_id="929724111839", pn_tok=FCM_TOKEN)
    assert t == PushTarget("fcm", False, "929724111839", None, (("remote", FCM_TOKEN),))


def test_rfc8599_form_wins_over_legacy() -> None:
    t = must_parse(pn_provider="fcm", pn_param="proj", pn_prid="tok", pn_type="apple")
    assert t.provider == "fcm"


# --- capability query (RFC 8599 §4.1.5) -------------------------------------------


def test_capability_query() -> None:
    assert is_capability_query({"pn-provider": "apns"})
    assert not is_capability_query({"pn-provider": "apns", "pn-prid": VOIP})
    assert not is_capability_query({})
    assert parse_push_target({"pn-provider": "apns"}) is None


def test_capability_query_for_unknown_provider_raises_unsupported() -> None:
    with pytest.raises(UnsupportedProviderError):
        parse_push_target({"pn-provider": "hms"})


# --- errors ------------------------------------------------------------------------


def test_token_count_does_not_match_services() -> None:
    reason = reason_of(
        pn_provider="apns", pn_param="ABCD123456.org.x.voip&remote", pn_prid=f"{VOIP}:voip"
    )
    assert "1 token" in reason and "2 service" in reason
    reason = reason_of(
        pn_provider="apns", pn_param="ABCD123456.org.x.voip", pn_prid=f"{VOIP}:voip&{REMOTE}:remote"
    )
    assert "2 token" in reason and "1 service" in reason


def test_unknown_service_in_pn_param() -> None:
    reason = reason_of(pn_provider="apns", pn_param="ABCD123456.org.x.voip&fax", pn_prid="a&b")
    assert "unknown push service 'fax'" in reason


def test_unknown_service_in_pn_prid() -> None:
    reason = reason_of(pn_provider="apns", pn_param="ABCD123456.org.x.voip", pn_prid=VOIP + ":fax")
    assert "unknown push service 'fax'" in reason


def test_token_suffix_for_undeclared_service() -> None:
    reason = reason_of(
        pn_provider="apns", pn_param="ABCD123456.org.x.voip", pn_prid=REMOTE + ":remote"
    )
    assert "'remote'" in reason and "not declared" in reason


def test_two_tokens_for_the_same_service() -> None:
    reason = reason_of(
        pn_provider="apns", pn_param="ABCD123456.org.x.voip&remote", pn_prid="a:voip&b:voip"
    )
    assert "two tokens" in reason


def test_tokens_without_suffix_for_several_services() -> None:
    reason = reason_of(pn_provider="apns", pn_param="ABCD123456.org.x.voip&remote", pn_prid="a&b")
    assert "suffix" in reason


def test_missing_pn_param_for_apns() -> None:
    assert "missing pn-param for apns" in reason_of(pn_provider="apns", pn_prid=VOIP)


def test_missing_pn_param_for_fcm() -> None:
    assert "missing pn-param for fcm" in reason_of(pn_provider="fcm", pn_prid=FCM_TOKEN)


@pytest.mark.parametrize("pn_param", ["org.example.app.voip", "abcd.org.example.app"])
def test_apns_pn_param_without_team_id(pn_param: str) -> None:
    assert "no team id" in reason_of(pn_provider="apns", pn_param=pn_param, pn_prid=VOIP)


def test_apns_pn_param_without_bundle() -> None:
    assert "TEAMID.bundle-id" in reason_of(pn_provider="apns", pn_param="ABCD123456", pn_prid=VOIP)


@pytest.mark.parametrize("provider", ["hms", "apns.prod", "gcm"])
def test_unknown_provider_is_unsupported(provider: str) -> None:
    with pytest.raises(UnsupportedProviderError) as info:
        parse(pn_provider=provider, pn_param="x", pn_prid="y")
    assert provider in info.value.reason
    assert info.value.provider == provider


def test_unknown_legacy_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedProviderError):
        parse(pn_type="windows", pn_tok="x", app_id="y")


@pytest.mark.parametrize(
    "params",
    [
        {"pn-provider": "apns", "pn-param": "ABCD123456.org.x.voip", "pn-prid": ""},
        {"pn-provider": "apns", "pn-param": "ABCD123456.org.x.voip", "pn-prid": None},
        {"pn-provider": "apns", "pn-param": "ABCD123456.org.x.voip", "pn-prid": ":voip"},
        {"pn-provider": "apns", "pn-param": "ABCD123456.org.x.voip&remote", "pn-prid": "a:voip&"},
        {"pn-provider": "fcm", "pn-param": "p", "pn-prid": ":remote"},
        {"pn-type": "apple", "app-id": "org.x", "pn-tok": ""},
    ],
)
def test_empty_token(params: dict[str, str | None]) -> None:
    with pytest.raises(PushParamError) as info:
        parse_push_target(params)
    assert "empty" in info.value.reason


def test_empty_provider() -> None:
    assert "empty pn-provider" in reason_of(pn_provider=None, pn_prid=VOIP)


def test_token_with_url_characters_is_rejected() -> None:
    reason = reason_of(pn_provider="apns", pn_param="ABCD123456.org.x", pn_prid="../../x?y")
    assert "invalid characters" in reason


def test_pn_prid_without_provider() -> None:
    assert "without pn-provider" in reason_of(pn_prid=VOIP)


def test_legacy_missing_token_and_app_id() -> None:
    assert "missing pn-tok" in reason_of(pn_type="apple", app_id="org.x")
    assert "missing app-id" in reason_of(pn_type="apple", pn_tok=VOIP)


@given(st.dictionaries(st.sampled_from(["pn-provider", "pn-param", "pn-prid"]), st.text()))
def test_arbitrary_values_only_raise_push_param_error(params: dict[str, str]) -> None:
    try:
        target = parse_push_target(params)
    except PushParamError as exc:
        assert exc.reason
    else:
        assert target is None or all(token for _, token in target.tokens)


def test_params_of_a_parsed_contact_uri() -> None:
    uri = parse_uri(
        "sip:alice@192.0.2.1:5060;transport=tcp;pn-provider=apns.dev"
        ";pn-param=ABCD123456.org.linphone.phone.voip%26remote"
        f";pn-prid={VOIP}%3Avoip%26{REMOTE}%3Aremote"
    )
    t = parse_push_target(dict(uri.params))
    assert t is not None and t.sandbox
    assert t.voip_token == VOIP and t.remote_token == REMOTE

import pytest

from sidecar.identity.xfcc import XfccError, parse_xfcc, peer_spiffe_id


def test_envoy_sanitize_set_element() -> None:
    header = "By=spiffe://demo.local/envoy;Hash=abc;URI=spiffe://demo.local/agent/writer"
    assert str(peer_spiffe_id(header)) == "spiffe://demo.local/agent/writer"


def test_quoted_values_with_separators_and_escapes() -> None:
    header = 'Hash=1;Subject="CN=a, O=\\"b\\";c";URI=spiffe://demo.local/x'
    [element] = parse_xfcc(header)
    assert element["subject"] == ['CN=a, O="b";c']
    assert element["uri"] == ["spiffe://demo.local/x"]


@pytest.mark.parametrize(
    "header",
    [
        "URI=spiffe://demo.local/a,URI=spiffe://demo.local/b",  # two elements: appended, not set
        "URI=spiffe://demo.local/a;URI=spiffe://demo.local/b",  # two URIs in one element
        "Hash=abc",  # no URI
        "URI=https://demo.local/a",  # not a SPIFFE ID
        "URI=spiffe://demo.local/a/../b",  # invalid path
        'URI="spiffe://demo.local/a',  # unterminated quote
        "URI",  # no '='
        "",
        ",URI=spiffe://demo.local/a",
        "URI=spiffe://demo.local/" + "a" * 20000,
    ],
)
def test_rejected(header: str) -> None:
    with pytest.raises(XfccError):
        peer_spiffe_id(header)

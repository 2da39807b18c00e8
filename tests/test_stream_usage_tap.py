"""The stream relay's usage tap, pure: it finds the usage however the upstream's bytes are split into reads, drops
only the usage-only chunk the client did not ask for, and passes every other byte through unchanged."""

import json

import pytest

from grace_hpc.router.stream_usage import UsageTap, tapped


def event(obj: object, end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + end


def chunk(text: str, finish: str | None = None) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text},
                                                            "finish_reason": finish}]}


USAGE = {"prompt_tokens": 18, "completion_tokens": 3, "total_tokens": 21}
# a content that quotes the word usage (escaped inside the JSON string) must not be taken for the key
BEFORE = event(chunk('say "usage"')) + event(chunk(" two")) + event(chunk("", "length"))
USAGE_ONLY = event({"object": "chat.completion.chunk", "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"


def relay(tap: UsageTap, data: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *cuts, len(data)]
    return b"".join(tap.feed(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)) + tap.end()


@pytest.mark.parametrize("strip", [True, False])
def test_split_at_any_byte_the_usage_is_read_and_only_the_usage_only_chunk_is_dropped(strip):
    stream = BEFORE + USAGE_ONLY + DONE
    expected = BEFORE + DONE if strip else stream
    for cut in range(1, len(stream)):
        tap = UsageTap(strip)
        assert relay(tap, stream, [cut]) == expected, cut
        assert tap.usage == USAGE, cut


def test_one_byte_reads_and_crlf_events_are_handled_too():
    stream = (BEFORE + USAGE_ONLY + DONE).replace(b"\n", b"\r\n")
    tap = UsageTap(strip=True)
    assert relay(tap, stream, list(range(1, len(stream)))) == (BEFORE + DONE).replace(b"\n", b"\r\n")
    assert tap.usage == USAGE


def test_usage_on_a_chunk_with_choices_is_read_and_never_dropped():
    # llama.cpp's /v1/completions stream puts its usage on the last chunk with a choice, asked or not
    last = event({**chunk("", "length"), "usage": USAGE})
    tap = UsageTap(strip=True)
    assert relay(tap, last + DONE, [5]) == last + DONE
    assert tap.usage == USAGE


def test_a_stream_without_usage_passes_through_untouched_and_reports_none():
    tap = UsageTap(strip=True)
    assert [tap.feed(BEFORE), tap.feed(DONE), tap.end()] == [BEFORE, DONE, b""]
    assert tap.usage is None


def test_the_request_asks_for_usage_and_remembers_whether_the_client_did():
    body, raw, tap = tapped({"model": "m", "stream": True})
    assert body["stream_options"] == {"include_usage": True} and json.loads(raw) == body and tap.strip
    body, _, tap = tapped({"model": "m", "stream": True, "stream_options": {"include_usage": True}})
    assert not tap.strip
    body, _, tap = tapped({"stream": True, "stream_options": {"include_usage": False, "continuous_usage_stats": 1}})
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": 1} and tap.strip

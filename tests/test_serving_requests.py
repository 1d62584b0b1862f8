"""jobapi.serving without a server: where a request ends, how much of it has arrived, the error envelope."""

from __future__ import annotations

import json

import pytest
from gunicorn.config import Config
from gunicorn.http.errors import InvalidHeader, LimitRequestHeaders, LimitRequestLine

from jobapi.serving import MAX_HEAD_BYTES, _TooLarge, error_response, request_arrival

CLIENT = ("127.0.0.1", 40000)
LIMIT = 64 * 1024


def arrival(data: bytes):
    return request_arrival(Config(), data, CLIENT, LIMIT)


def post(body: bytes, *headers: str) -> bytes:
    head = "POST /api/jobs HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    return head.encode() + body


def test_a_head_is_complete_only_with_its_blank_line():
    whole = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for cut in range(1, len(whole)):
        assert arrival(whole[:cut]).end is None
    done = arrival(whole)
    assert (done.head_end, done.end) == (len(whole), len(whole))
    assert done.request.path == "/healthz"
    assert done.request.body.read() == b""


def test_a_request_without_a_length_has_no_body_whatever_follows():
    first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    done = arrival(first + b"GET /b HTTP/1.1\r\n")
    assert done.end == len(first)
    assert done.request.body.read() == b""


def test_a_body_of_known_length_is_complete_once_all_of_it_arrived():
    data = post(b"0123456789", "Content-Length: 10")
    partial = arrival(data[:-3])
    assert partial.end is None and partial.head_end == len(data) - 10 and partial.length == len(data)
    done = arrival(data + b"GET / HTTP/1.1\r\n")
    assert done.end == len(data)
    assert done.request.body.read() == b"0123456789"


def test_a_chunked_body_is_complete_after_its_last_chunk_and_trailers():
    data = post(b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n", "Transfer-Encoding: chunked")
    for cut in range(data.index(b"5\r\n"), len(data)):
        assert arrival(data[:cut]).end is None, cut
    done = arrival(data + b"GET / HTTP/1.1\r\n")
    assert done.end == len(data)
    assert done.request is None  # its body was read to find its end: a thread parses it again


def test_bodies_over_the_limit_are_refused_before_they_arrive():
    with pytest.raises(_TooLarge):
        arrival(post(b"", f"Content-Length: {LIMIT + 1}"))
    assert arrival(post(b"", f"Content-Length: {LIMIT}")).end is None
    chunk = b"a" * 8192
    chunked = post(b"".join(b"2000\r\n" + chunk + b"\r\n" for _ in range(8)), "Transfer-Encoding: chunked")
    assert arrival(chunked).end is None  # exactly the limit, and not finished
    with pytest.raises(_TooLarge):
        arrival(chunked + b"1\r\na\r\n")


def test_heads_over_the_limits_are_refused():
    with pytest.raises(LimitRequestLine):
        arrival(b"GET /" + b"a" * 5000)
    with pytest.raises(LimitRequestHeaders):
        arrival(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * (MAX_HEAD_BYTES // 8))
    with pytest.raises(InvalidHeader):
        arrival(post(b"", "Content-Length: 1", "Content-Length: 2"))


def test_the_client_waiting_for_100_continue_is_known():
    assert arrival(post(b"", "Content-Length: 5", "Expect: 100-continue")).expects_continue
    assert not arrival(post(b"", "Content-Length: 5")).expects_continue


@pytest.mark.parametrize(
    ("status", "error_id", "message"),
    [
        (400, "bad_request", "Bad request"),
        (408, "request_timeout", "Request timeout"),
        (413, "payload_too_large", "Payload too large"),
        (414, "uri_too_long", "URI too long"),
        (431, "request_header_fields_too_large", "Request header fields too large"),
        (501, "not_implemented", "Not implemented"),
    ],
)
def test_the_servers_own_answers_are_the_envelope(status, error_id, message):
    head, _, body = error_response(status).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    assert "Content-Type: application/json" in lines and "Connection: close" in lines
    assert "X-Content-Type-Options: nosniff" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {"id": error_id, "message": message}

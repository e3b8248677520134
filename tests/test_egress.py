"""The egress guard (shipyard.egress): non-public addresses refused, rebinding defeated, redirects re-checked.

A real HTTP server on 127.0.0.1 stands in for "the internet": the tests allow 127.0.0.1/32 where a fetch must
succeed, and use an injected resolver to play the DNS server (a public name that resolves to private addresses,
or changes its answer between lookups).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shipyard.egress import EgressPolicy, EgressRefused, check_address, fetch

LOOPBACK_ONLY = EgressPolicy.from_cidrs(["127.0.0.1/32"])


class _Handler(BaseHTTPRequestHandler):
    hosts: list[str] = []

    def do_GET(self) -> None:
        type(self).hosts.append(self.headers.get("host", ""))
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        body = b"big" * 1000 if self.path == "/big" else b"hello"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture()
def local_server() -> Iterator[int]:
    _Handler.hosts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "224.0.0.1",
        "fd00::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(EgressRefused):
        check_address(address, EgressPolicy())


def test_public_addresses_pass_and_operator_allow_list_opens_a_network() -> None:
    assert str(check_address("93.184.216.34", EgressPolicy())) == "93.184.216.34"
    assert str(check_address("2606:4700::1111", EgressPolicy())) == "2606:4700::1111"
    assert str(check_address("10.1.2.3", EgressPolicy.from_cidrs(["10.0.0.0/8"]))) == "10.1.2.3"
    with pytest.raises(EgressRefused):
        check_address("10.1.2.3", EgressPolicy.from_cidrs(["192.168.0.0/16"]))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/",
        "http://localhost:{port}/",
        "http://2130706433:{port}/",  # 127.0.0.1 as one decimal number
        "http://0x7f.0.0.1:{port}/",
        "http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_fetch_refuses_loopback_and_metadata_urls(url: str, local_server: int) -> None:
    with pytest.raises(EgressRefused):
        asyncio.run(fetch(url.format(port=local_server)))
    assert _Handler.hosts == []  # nothing reached the server


def test_fetch_refuses_other_schemes() -> None:
    for url in ("file:///etc/passwd", "gopher://example.com/", "ftp://example.com/x", "http:///nohost"):
        with pytest.raises(EgressRefused):
            asyncio.run(fetch(url))


def test_a_name_with_any_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(EgressRefused):
        asyncio.run(fetch("http://mixed.example/", resolver=resolver))


def test_dns_rebinding_cannot_move_the_connection(local_server: int) -> None:
    """The name resolves to an allowed address once, then to the metadata address: the guard connects to the
    address it checked, without a second lookup."""
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]

    result = asyncio.run(fetch(f"http://rebind.example:{local_server}/", LOOPBACK_ONLY, resolver))
    assert result.status == 200 and result.content == b"hello"
    assert result.address == "127.0.0.1"
    assert calls == ["rebind.example"]  # resolved exactly once
    assert _Handler.hosts == [f"rebind.example:{local_server}"]  # the Host header keeps the name
    # The next fetch sees the rebound answer and is refused before connecting.
    with pytest.raises(EgressRefused):
        asyncio.run(fetch(f"http://rebind.example:{local_server}/", LOOPBACK_ONLY, resolver))
    assert len(_Handler.hosts) == 1


def test_redirects_are_checked_hop_by_hop(local_server: int) -> None:
    ok = asyncio.run(fetch(f"http://127.0.0.1:{local_server}/redirect?to=/final", LOOPBACK_ONLY))
    assert ok.status == 200 and ok.url.endswith("/final")
    with pytest.raises(EgressRefused):
        asyncio.run(fetch(f"http://127.0.0.1:{local_server}/redirect?to=http://169.254.169.254/", LOOPBACK_ONLY))
    with pytest.raises(EgressRefused):
        asyncio.run(fetch(f"http://127.0.0.1:{local_server}/redirect?to=http://10.0.0.1/", LOOPBACK_ONLY))


def test_body_size_is_capped(local_server: int) -> None:
    policy = EgressPolicy(LOOPBACK_ONLY.allow, max_bytes=100)
    with pytest.raises(Exception, match="over 100 bytes"):
        asyncio.run(fetch(f"http://127.0.0.1:{local_server}/big", policy))

"""Real servers for the discovery tests: a small authoritative DNS server on dnspython, whose
records the test changes as it goes, and etcd started in a temporary directory. Both listen
on loopback, ephemeral ports, and are stopped by the fixture that started them."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx

from tests.conftest import free_port


class DnsServer(asyncio.DatagramProtocol):
    """Answers from `records`: (name, type) -> rdata texts; a name it has no record for at
    all is NXDOMAIN; while `down`, it answers nothing (a resolver that times out)."""

    def __init__(self, ttl: int = 1) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.ttl = ttl
        self.down = False
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def set(self, name: str, kind: str, texts: list[str]) -> None:
        self.records[(name, kind)] = texts

    def srv(self, name: str, target: str, ports: list[int], weight: int = 1) -> None:
        """SRV records `name` -> `target`:port for each port, all of priority 0."""
        self.set(name, "SRV", [f"0 {weight} {port} {target}." for port in ports])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        if self.down or self.transport is None:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        if not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif texts := self.records.get((name, kind)):
            response.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, "IN", kind, texts)
            )
        self.transport.sendto(response.to_wire(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def etcd_binary() -> str | None:
    return shutil.which("etcd")


class EtcdServer:
    """One etcd member with its data in `directory`, client and peer ports on loopback."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EtcdServer:
        binary = etcd_binary()
        assert binary is not None
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        with (self.directory / "etcd.log").open("wb") as log_file:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--name=usher-test",
                    f"--data-dir={self.directory / 'data'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=usher-test={peer}",
                    "--log-level=error",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{client}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        log = (self.directory / "etcd.log").read_text(errors="replace")
        self.stop()
        raise AssertionError(f"etcd did not start within {timeout}s: {log[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def write_atomically(path: Path, text: str) -> None:
    """As Prometheus file_sd recommends: write aside, then rename over."""
    aside = path.with_name(path.name + ".tmp")
    aside.write_text(text)
    aside.replace(path)

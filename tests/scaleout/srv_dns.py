"""A DNS server for one SRV name, standing in for a headless Service's cluster DNS.

Kubernetes answers `_http._tcp.SERVICE.NAMESPACE.svc.cluster.local` with one SRV record per
ready pod; the router's `server-template` fills its slots from that answer. Here the records
are the replicas the test has registered, on 127.0.0.1 and their own ports, so HAProxy runs
the shipped configuration unchanged.
"""

import socket
import struct
import threading

TYPE_A, TYPE_SRV, CLASS_IN = 1, 33, 1
TTL = 1


def encode_name(name):
    labels = name.rstrip(".").split(".")
    return b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\0"


def read_question(packet):
    """(query id, lower-cased name, type, the question's bytes) of a query."""
    (query_id,) = struct.unpack_from("!H", packet)
    offset, labels = 12, []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode().lower())
        offset += 1 + length
    offset += 1
    qtype, _qclass = struct.unpack_from("!HH", packet, offset)
    return query_id, ".".join(labels), qtype, packet[12 : offset + 4]


def record(name, rtype, rdata):
    return encode_name(name) + struct.pack("!HHIH", rtype, CLASS_IN, TTL, len(rdata)) + rdata


class SrvDns:
    """Answers SRV queries for `srv_name` with the registered replicas (A records of their
    targets in the additional section), and A queries for those targets."""

    def __init__(self, srv_name):
        self.srv_name = srv_name.lower()
        self.replicas = {}  # target host name -> port
        self.lock = threading.Lock()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.socket.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def register(self, name, port):
        with self.lock:
            self.replicas[f"{name}.replicas.test"] = port

    def unregister(self, name):
        with self.lock:
            self.replicas.pop(f"{name}.replicas.test", None)

    def _serve(self):
        while True:
            try:
                packet, peer = self.socket.recvfrom(4096)
                self.socket.sendto(self._answer(packet), peer)
            except (OSError, IndexError, struct.error, UnicodeDecodeError):
                continue

    def _answer(self, packet):
        query_id, name, qtype, question = read_question(packet)
        with self.lock:
            replicas = dict(self.replicas)
        answers, additional = [], []
        if qtype == TYPE_SRV and name == self.srv_name:
            for target, port in sorted(replicas.items()):
                rdata = struct.pack("!HHH", 0, 100, port) + encode_name(target)
                answers.append(record(name, TYPE_SRV, rdata))
                additional.append(record(target, TYPE_A, socket.inet_aton("127.0.0.1")))
        elif qtype == TYPE_A and name in replicas:
            answers.append(record(name, TYPE_A, socket.inet_aton("127.0.0.1")))
        known = name == self.srv_name or name in replicas
        rcode = 0 if known else 3  # NXDOMAIN
        flags = 0x8400 | rcode  # a response, authoritative
        header = struct.pack("!HHHHHH", query_id, flags, 1, len(answers), 0, len(additional))
        return header + question + b"".join(answers) + b"".join(additional)

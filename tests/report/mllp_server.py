"""A small HL7 v2 receiver over MLLP, run as its own process by the HL7 channel's tests.

``python mllp_server.py PORT FOLDER ANSWER [CERT KEY CA]``: listens on 127.0.0.1:PORT (over TLS
with CERT and KEY, requiring a client certificate that chains to CA, when they are given); every framed message
it receives is parsed with hl7apy (STRICT, HL7 v2.5.1) and written to FOLDER as NNNN.hl7;
then it answers as ANSWER says:

* ``AA``, ``AE``, ``AR``: an ACK with that MSA-1 (an ``AE`` too for a message hl7apy cannot
  parse, whatever ANSWER says, with ERR-3 ``102``, data type error, as a strict receiver
  does; ``AE`` and ``AR`` carry ERR-3 ``207``, application internal error);
* ``garbled``: bytes that are not an ACK; ``close``: closes the connection without an answer.

FOLDER/ready is written once it listens.
"""

from __future__ import annotations

import datetime as dt
import socketserver
import ssl
import sys
import threading
from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

START, END = b"\x0b", b"\x1c\r"


class Receiver(socketserver.BaseRequestHandler):
    folder: Path
    answer: str
    lock = threading.Lock()
    count = 0

    def handle(self) -> None:
        data = b""
        while True:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
            while END in data:
                block, data = data.split(END, 1)
                if not self.reply(block.lstrip(START).decode("utf-8")):
                    return

    def reply(self, message: str) -> bool:
        with self.lock:
            Receiver.count += 1
            (self.folder / f"{Receiver.count:04d}.hl7").write_text(message, encoding="utf-8")
        try:
            parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
            parsed.validate()
            control_id = parsed.msh.msh_10.value
            code, error = self.answer, "207"
        except Exception:  # a receiver that cannot parse the message rejects it
            control_id = message.split("\r")[0].split("|")[9] if "|" in message else ""
            code, error = "AE", "102"
        if self.answer == "close":
            self.request.close()
            return False
        if self.answer == "garbled":
            self.request.sendall(START + b"this is not an ACK" + END)
            return True
        now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
        segments = [
            f"MSH|^~\\&|RIS|HOSPITAL|SCREENER||{now}||ACK^R01^ACK|ACK{Receiver.count:06d}|P|2.5.1",
            f"MSA|{code}|{control_id}",
        ]
        if code != "AA":
            segments.append(f"ERR|||{error}^Application internal error^HL70357|E")
        self.request.sendall(START + "\r".join(segments).encode("utf-8") + b"\r" + END)
        return True


def main() -> None:
    port, folder, answer = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    folder.mkdir(parents=True, exist_ok=True)
    Receiver.folder, Receiver.answer = folder, answer
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", port), Receiver) as server:
        if len(sys.argv) > 4:  # a failed handshake is an OSError that socketserver drops
            cert, key, ca = sys.argv[4:7]
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            ctx.load_verify_locations(cafile=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        (folder / "ready").write_text("listening")
        server.serve_forever()


if __name__ == "__main__":
    main()

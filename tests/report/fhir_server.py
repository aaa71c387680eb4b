"""A small FHIR R4 server for transaction Bundles, run as its own process by the FHIR channel's
tests (no FHIR server installs from the registries here: HAPI is Java, node-fhir-server-core
is a framework without storage).

``python fhir_server.py PORT FOLDER [--token TOKEN] [--answer STATUS] [--require-subject]
[--certificate PEM --key PEM [--client-ca PEM]]`` serves ``http://127.0.0.1:PORT/fhir``, or
``https://`` with ``--certificate`` (``--client-ca``: each client must present a certificate
that chains to it, else the handshake fails and nothing is read). A POST of a transaction Bundle there is answered as FHIR
servers answer (https://hl7.org/fhir/R4/http.html#transaction):

* the Bundle and each entry's resource are validated with fhir.resources (R4B classes); an
  invalid one gets 400 with an OperationOutcome naming the element (``issue.expression``);
* ``--require-subject``: a DiagnosticReport without a subject gets 422 (a server profile's
  rule), with an OperationOutcome;
* otherwise each entry is created under FOLDER/TYPE/ID.json, unless its ``ifNoneExist``
  (``identifier=SYSTEM|VALUE``) matches one already there (200, the existing one), urn:uuid
  references between entries are rewritten to TYPE/ID, and the answer is 200 with a
  transaction-response Bundle (each entry's ``response.status`` and ``location``);
* ``--token``: a request without ``Authorization: Bearer TOKEN`` gets 401;
* ``--answer STATUS``: every POST gets that status (with an OperationOutcome), e.g. 503;
* a GET of ``/fhir/TYPE/ID`` (or ``/fhir/TYPE/ID/_history/1``, a location it answered) is the
  read interaction (https://hl7.org/fhir/R4/http.html#read): 200 with the stored resource, 404
  with an OperationOutcome when there is none.

FOLDER/ready is written once it listens; FOLDER/requests.log gets one line per request.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

BASE = "/fhir"


def outcome(code: str, severity: str = "error", expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": "see expression"}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class Fhir(BaseHTTPRequestHandler):
    folder: Path
    token: str | None
    answer: int | None
    require_subject: bool
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        with self.lock, (self.folder / "requests.log").open("a") as log:
            log.write(format % args + "\n")

    def reply(self, status: int, body: dict[str, Any], location: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(401, outcome("login"))
        if self.path.rstrip("/") != BASE:
            return self.reply(404, outcome("not-found"))
        if self.answer is not None:
            return self.reply(
                self.answer, outcome("transient" if self.answer >= 500 else "invalid")
            )
        try:
            data = json.loads(body)
            Bundle.model_validate(data)
            for entry in data["entry"]:
                resource = entry["resource"]
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"])
            return self.reply(400, outcome("invalid", expression=f"Bundle.{where}"))
        except (ValueError, KeyError, TypeError):
            return self.reply(400, outcome("structure"))
        if data.get("type") != "transaction":
            return self.reply(400, outcome("invalid", expression="Bundle.type"))
        for i, entry in enumerate(data["entry"]):
            resource = entry["resource"]
            if (
                self.require_subject
                and resource["resourceType"] == "DiagnosticReport"
                and "subject" not in resource
            ):
                return self.reply(
                    422, outcome("required", expression=f"Bundle.entry[{i}].resource.subject")
                )
        with self.lock:
            response = self.transact(data)
        return self.reply(200, response)

    def do_GET(self) -> None:
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            return self.reply(401, outcome("login"))
        parts = self.path.removeprefix(BASE + "/").split("/")
        if parts[2:] == ["_history", "1"]:
            parts = parts[:2]
        if len(parts) != 2 or not all(p.isalnum() for p in parts):
            return self.reply(404, outcome("not-found"))
        path = self.folder / parts[0] / f"{parts[1]}.json"
        if not path.is_file():
            return self.reply(404, outcome("not-found"))
        return self.reply(200, json.loads(path.read_text()))

    def transact(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create each entry (or find it by ifNoneExist), references resolved."""
        ids: dict[str, str] = {}
        plans = []
        for entry in data["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            existing = self.find(kind, entry.get("request", {}).get("ifNoneExist", ""))
            rid = existing or uuid.uuid4().hex
            ids[entry.get("fullUrl", "")] = f"{kind}/{rid}"
            plans.append((kind, rid, existing is None, resource))
        answers = []
        for kind, rid, create, resource in plans:
            if create:
                text = json.dumps(resource)
                for full_url, local in ids.items():
                    if full_url:
                        text = text.replace(json.dumps(full_url), json.dumps(local))
                resource = {**json.loads(text), "id": rid}
                folder = self.folder / kind
                folder.mkdir(exist_ok=True)
                (folder / f"{rid}.json").write_text(json.dumps(resource))
            status = "201 Created" if create else "200 OK"
            answers.append({"response": {"status": status, "location": f"{kind}/{rid}/_history/1"}})
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}

    def find(self, kind: str, query: str) -> str | None:
        """The id of a stored resource of ``kind`` with the identifier ``query`` names."""
        wanted = parse_qs(query).get("identifier")
        if not wanted or not (self.folder / kind).is_dir():
            return None
        system, _, value = wanted[0].partition("|")
        for path in sorted((self.folder / kind).glob("*.json")):
            stored = json.loads(path.read_text())
            for ident in stored.get("identifier", []):
                if ident.get("system") == system and ident.get("value") == value:
                    return path.stem
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--token")
    parser.add_argument("--answer", type=int)
    parser.add_argument("--require-subject", action="store_true")
    parser.add_argument("--certificate")
    parser.add_argument("--key")
    parser.add_argument("--client-ca")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    Fhir.folder, Fhir.token, Fhir.answer = args.folder, args.token, args.answer
    Fhir.require_subject = args.require_subject
    with ThreadingHTTPServer(("127.0.0.1", args.port), Fhir) as server:
        if args.certificate:  # a failed handshake is an OSError that socketserver drops
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.certificate, args.key)
            if args.client_ca:
                ctx.load_verify_locations(cafile=args.client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        (args.folder / "ready").write_text("listening")
        server.serve_forever()


if __name__ == "__main__":
    main()

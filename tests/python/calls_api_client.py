"""Twilio's own Python client against the gateway's Calls API.

Run by tests/calls_api.rs with a live inbound call to the `echo` flow:
reads it, refuses bad input with Twilio's error codes, redirects it to a
local webhook whose signature Twilio's RequestValidator must accept, and
sees it end.
"""

import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

BASE = os.environ["API_BASE"]
ACCOUNT = os.environ["ACCOUNT_SID"]
TOKEN = os.environ["AUTH_TOKEN"]


def client(token=TOKEN):
    c = Client(ACCOUNT, token)
    c.api.base_url = BASE
    return c


def expect_error(call, status, code):
    try:
        call()
    except TwilioRestException as error:
        assert error.status == status, (error.status, error.msg)
        assert error.code == code, (error.code, error.msg)
        return error
    raise AssertionError(f"expected HTTP {status} code {code}")


webhook_hits = []


class Webhook(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        params = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        url = f"http://127.0.0.1:{self.server.server_port}{self.path}"
        valid = RequestValidator(TOKEN).validate(
            url, params, self.headers.get("X-Twilio-Signature", "")
        )
        webhook_hits.append((valid, params))
        body = b"<Response><Hangup/></Response>"
        self.send_response(200 if valid else 403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    twilio = client()
    live = [c for c in twilio.calls.list(status="in-progress", limit=20) if c.to == "echo"]
    assert len(live) == 1, [(c.sid, c.to, c.status) for c in live]
    sid = live[0].sid
    call = twilio.calls(sid).fetch()
    assert call.status == "in-progress", call.status
    assert call.direction == "inbound", call.direction
    assert call.start_time is not None and call.end_time is None
    print("fetched", sid, call.status)

    expect_error(lambda: client("wrong-token-0123456789").calls(sid).fetch(), 401, 20003)
    expect_error(lambda: twilio.calls("CA" + "0" * 32).fetch(), 404, 20404)
    error = expect_error(
        lambda: twilio.calls(sid).update(twiml="<Response><Nope/></Response>"), 400, 12100
    )
    print("bad TwiML refused:", error.msg)
    assert twilio.calls(sid).fetch().status == "in-progress"

    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/next?step=1"
    twilio.calls(sid).update(url=url, method="POST")
    assert len(webhook_hits) == 1, webhook_hits
    valid, params = webhook_hits[0]
    assert valid, "RequestValidator rejected the gateway's signature"
    assert params["CallSid"] == sid and params["AccountSid"] == ACCOUNT, params
    assert params["CallStatus"] == "in-progress" and params["Direction"] == "inbound", params
    print("webhook signature valid; TwiML <Hangup/> returned")

    deadline = time.time() + 10
    while True:
        call = twilio.calls(sid).fetch()
        if call.status == "completed" or time.time() > deadline:
            break
        time.sleep(0.1)
    assert call.status == "completed", call.status
    assert call.duration is not None and call.end_time is not None
    expect_error(lambda: twilio.calls(sid).update(status="completed"), 404, 20404)
    completed = twilio.calls.list(status="completed", to="echo")
    assert any(c.sid == sid for c in completed)
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print("check failed:", failure, file=sys.stderr)
        raise

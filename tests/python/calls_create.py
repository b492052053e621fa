"""Twilio's own Python client places a call through the gateway.

Run by tests/calls_api.rs with a sipp agent (TCP, digest challenge, needs
X-Case: 42) and a Twilio Media Streams bot. Creates the call with
<Connect><Stream>, follows its status, hangs it up with new TwiML, and checks
the status callbacks: asked-for events, in order, validly signed.
"""

import os
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
AGENT = os.environ["AGENT_URI"]
STREAM = os.environ["STREAM_URL"]

callbacks = []


class Callbacks(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        params = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        url = f"http://127.0.0.1:{self.server.server_port}{self.path}"
        valid = RequestValidator(TOKEN).validate(url, params, self.headers.get("X-Twilio-Signature", ""))
        callbacks.append((valid, params))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def expect_error(call, status, code):
    try:
        call()
    except TwilioRestException as error:
        assert (error.status, error.code) == (status, code), (error.status, error.code, error.msg)
        return
    raise AssertionError(f"expected HTTP {status} code {code}")


def wait_status(twilio, sid, wanted, seconds=15):
    deadline = time.time() + seconds
    while True:
        call = twilio.calls(sid).fetch()
        if call.status == wanted:
            return call
        assert time.time() < deadline, f"status stayed {call.status}, wanted {wanted}"
        time.sleep(0.05)


def main():
    twilio = Client(ACCOUNT, TOKEN)
    twilio.api.base_url = BASE
    server = ThreadingHTTPServer(("127.0.0.1", 0), Callbacks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback_url = f"http://127.0.0.1:{server.server_port}/status"
    twiml = (
        f'<Response><Connect><Stream url="{STREAM}">'
        '<Parameter name="case" value="42"/></Stream></Connect></Response>'
    )

    # Bad requests raise Twilio's errors and place nothing.
    expect_error(lambda: twilio.calls.create(to="nobody-here", from_="Jack", twiml=twiml), 400, 21211)
    expect_error(lambda: twilio.calls.create(to=AGENT, from_="", twiml=twiml), 400, 21603)
    expect_error(
        lambda: twilio.calls.create(to=AGENT, from_="Jack", twiml="<Response><Say>hi</Say></Response>"),
        400,
        12100,
    )
    assert twilio.calls.list(to=AGENT) == []

    call = twilio.calls.create(
        to=AGENT,
        from_="Jack",
        twiml=twiml,
        sip_auth_username="agent",
        sip_auth_password="s3cret",
        status_callback=callback_url,
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        timeout=20,
    )
    assert call.status == "queued", call.status
    assert call.direction == "outbound-api", call.direction
    assert call.sid.startswith("CA") and len(call.sid) == 34
    print("SID=" + call.sid, flush=True)

    live = wait_status(twilio, call.sid, "in-progress")
    assert live.start_time is not None and live.to == AGENT and live._from == "Jack"
    # Let the bot talk for a moment, then hang up the Twilio way.
    time.sleep(1.0)
    twilio.calls(call.sid).update(twiml="<Response><Hangup/></Response>")
    done = wait_status(twilio, call.sid, "completed")
    assert done.duration is not None and done.end_time is not None

    deadline = time.time() + 10
    while len(callbacks) < 4 and time.time() < deadline:
        time.sleep(0.05)
    events = [(params.get("CallStatus"), params.get("SequenceNumber")) for _, params in callbacks]
    assert all(valid for valid, _ in callbacks), "a callback signature did not validate"
    assert [seq for _, seq in events] == ["0", "1", "2", "3"], events
    assert [status for status, _ in events] == ["initiated", "ringing", "in-progress", "completed"], events
    last = callbacks[-1][1]
    assert last["CallSid"] == call.sid and last["Direction"] == "outbound-api", last
    assert "CallDuration" in last, last
    print("callbacks:", events)
    print("all checks passed")


if __name__ == "__main__":
    main()

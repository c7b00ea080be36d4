#!/usr/bin/env python3
"""Drive a Conversations scenario with the official twilio-python library.

Run by tests/sdk.rs (with the venv python that scripts/test.sh creates).

Environment:
    TRP_BASE_URL     base URL the library is pointed at (emulator or proxy),
                     e.g. http://127.0.0.1:4010
    TRP_ACCOUNT_SID  account SID (Basic username)
    TRP_AUTH_TOKEN   auth token (Basic password)

Scenario (all flags optional except --identity):
    1. create a service (or use --service) and a conversation in it (or use
       --conversation);
    2. add --identity as a participant, delete it (by MB sid), add it again
       ("readd"), and once more ("readd_again");
    3. with --duplicate ID: add ID twice ("duplicate" is the second add);
    4. with --missing-conversation: add a participant to a conversation that
       does not exist ("missing_conversation");
    5. with --extra N: add N more participants (extra-0 ... extra-N-1) and
       list the conversation's participants with --page-size ("list");
    6. fetch --identity's participant by identity ("fetch");
    7. with --user ID: create User ID, update it, fetch it, update
       --identity's participant attributes, delete User ID ("user_create",
       "user_update", "user_fetch", "participant_update", "user_delete").

Prints one JSON object on stdout: {"library", "version", "service_sid",
"conversation_sid", "steps": {name: {"ok": {...}} | {"error": {...}}}}.
A TwilioRestException is a result (recorded under "error"); anything else
(connection refused, bad arguments) exits non-zero with the reason on stderr.
"""

import argparse
import json
import os
import sys

# A region or edge rewrites the host of every URL, loopback included.
for _var in ("TWILIO_EDGE", "TWILIO_REGION"):
    os.environ.pop(_var, None)

import twilio  # noqa: E402
from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.rest import Client  # noqa: E402

MISSING_CONVERSATION = "CH" + "0" * 32


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"conversations.py: environment variable {name} is not set")
    return value


def participant(p):
    return {
        "sid": p.sid,
        "identity": p.identity,
        "conversation_sid": p.conversation_sid,
        "chat_service_sid": p.chat_service_sid,
        "account_sid": p.account_sid,
    }


def user(u):
    return {
        "sid": u.sid,
        "identity": u.identity,
        "friendly_name": u.friendly_name,
        "attributes": u.attributes,
    }


def attempt(action, shape=participant):
    """Run one library call; a Twilio error is a result, not a failure."""
    try:
        return {"ok": shape(action())}
    except TwilioRestException as e:
        return {
            "error": {
                "class": type(e).__name__,
                "status": e.status,
                "code": e.code,
                "message": e.msg,
                "method": e.method,
                "uri": e.uri,
            }
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identity", required=True)
    ap.add_argument("--service")
    ap.add_argument("--conversation")
    ap.add_argument("--duplicate")
    ap.add_argument("--missing-conversation", action="store_true")
    ap.add_argument("--extra", type=int, default=0)
    ap.add_argument("--page-size", type=int, default=2)
    ap.add_argument("--user")
    args = ap.parse_args()

    client = Client(env("TRP_ACCOUNT_SID"), env("TRP_AUTH_TOKEN"))
    # The way a user points the library elsewhere: the Domain is cached per
    # client, so this sticks for every call below.
    client.conversations.base_url = env("TRP_BASE_URL").rstrip("/")
    v1 = client.conversations.v1

    service_sid = args.service or v1.services.create(friendly_name="sdk-python").sid
    service = v1.services(service_sid)
    conversation_sid = (
        args.conversation
        or service.conversations.create(friendly_name="sdk-python").sid
    )
    conversation = service.conversations(conversation_sid)
    participants = conversation.participants

    steps = {}
    steps["create"] = attempt(lambda: participants.create(identity=args.identity))
    if "ok" not in steps["create"]:
        sys.exit(f"conversations.py: first create failed: {json.dumps(steps['create'])}")
    first_sid = steps["create"]["ok"]["sid"]
    steps["delete"] = attempt(lambda: participants(first_sid).delete(), shape=lambda r: r)
    steps["readd"] = attempt(lambda: participants.create(identity=args.identity))
    steps["readd_again"] = attempt(lambda: participants.create(identity=args.identity))

    if args.duplicate:
        steps["duplicate_first"] = attempt(lambda: participants.create(identity=args.duplicate))
        steps["duplicate"] = attempt(lambda: participants.create(identity=args.duplicate))

    if args.missing_conversation:
        steps["missing_conversation"] = attempt(
            lambda: service.conversations(MISSING_CONVERSATION).participants.create(
                identity=args.identity
            )
        )

    if args.extra:
        for i in range(args.extra):
            steps[f"extra_{i}"] = attempt(lambda i=i: participants.create(identity=f"extra-{i}"))
        steps["list"] = attempt(
            lambda: participants.list(page_size=args.page_size),
            shape=lambda ps: [participant(p) for p in ps],
        )

    steps["fetch"] = attempt(lambda: participants(args.identity).fetch())

    if args.user:
        users = service.users
        steps["user_create"] = attempt(
            lambda: users.create(identity=args.user, friendly_name="SDK User", attributes='{"tier":1}'),
            shape=user,
        )
        steps["user_update"] = attempt(
            lambda: users(args.user).update(friendly_name="Renamed User"), shape=user
        )
        steps["user_fetch"] = attempt(lambda: users(args.user).fetch(), shape=user)
        steps["participant_update"] = attempt(
            lambda: participants(args.identity).update(attributes='{"seat":3}'),
            shape=lambda p: dict(participant(p), attributes=p.attributes),
        )
        steps["user_delete"] = attempt(lambda: users(args.user).delete(), shape=lambda r: r)

    json.dump(
        {
            "library": "twilio-python",
            "version": twilio.__version__,
            "service_sid": service_sid,
            "conversation_sid": conversation_sid,
            "steps": steps,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

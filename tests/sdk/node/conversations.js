#!/usr/bin/env node
// Drive a Conversations scenario with the official twilio-node library.
// Run by tests/sdk.rs with cwd = this directory (twilio from ./node_modules,
// pinned by package.json / package-lock.json).
//
// Environment:
//   TRP_BASE_URL     base URL the library is pointed at (emulator or proxy)
//   TRP_ACCOUNT_SID  account SID (Basic username)
//   TRP_AUTH_TOKEN   auth token (Basic password)
//
// Arguments (the same scenario as ../python/conversations.py):
//   --identity ID              required: add, delete (by MB sid), add again
//                              ("readd") and once more ("readd_again")
//   --service IS --conversation CH   use these instead of creating them
//   --duplicate ID             add ID twice ("duplicate" is the second add)
//   --missing-conversation     add to a conversation that does not exist
//   --extra N --page-size P    add N more participants, list with pageSize P
//                              ("list")
// and finally fetch --identity's participant by identity ("fetch").
//
// Prints one JSON object on stdout: {library, version, service_sid,
// conversation_sid, steps: {name: {ok: {...}} | {error: {...}}}}. A
// RestException is a result; anything else exits 1 with the reason on stderr.
"use strict";

// A region or edge rewrites the host of every URL, loopback included.
delete process.env.TWILIO_EDGE;
delete process.env.TWILIO_REGION;

const twilio = require("twilio");
const version = require("twilio/package.json").version;

const MISSING_CONVERSATION = "CH" + "0".repeat(32);

function fail(message) {
  process.stderr.write(`conversations.js: ${message}\n`);
  process.exit(1);
}

function env(name) {
  const v = process.env[name];
  if (!v) fail(`environment variable ${name} is not set`);
  return v;
}

function parseArgs(argv) {
  const flags = new Set(["--missing-conversation"]);
  const valued = new Set([
    "--identity",
    "--service",
    "--conversation",
    "--duplicate",
    "--extra",
    "--page-size",
    "--user",
  ]);
  const out = { extra: 0, pageSize: 2 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (flags.has(a)) {
      out.missingConversation = true;
    } else if (valued.has(a)) {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      const v = argv[++i];
      const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
      out[key] = key === "extra" || key === "pageSize" ? Number(v) : v;
    } else {
      fail(`unknown argument ${a}`);
    }
  }
  if (!out.identity) fail("--identity is required");
  return out;
}

function user(u) {
  return {
    sid: u.sid,
    identity: u.identity,
    friendly_name: u.friendlyName,
    attributes: u.attributes,
  };
}

function participant(p) {
  return {
    sid: p.sid,
    identity: p.identity,
    conversation_sid: p.conversationSid,
    chat_service_sid: p.chatServiceSid,
    account_sid: p.accountSid,
  };
}

// One library call; a Twilio error is a result, not a failure.
async function attempt(action, shape = participant) {
  try {
    return { ok: shape(await action()) };
  } catch (e) {
    if (e instanceof twilio.RestException) {
      return {
        error: {
          class: e.constructor.name,
          status: e.status,
          code: e.code,
          message: e.message,
          more_info: e.moreInfo,
        },
      };
    }
    throw e;
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const client = twilio(env("TRP_ACCOUNT_SID"), env("TRP_AUTH_TOKEN"));
  // The way a user points the library elsewhere: the getter caches the
  // Domain, so this sticks for every call below.
  client.conversations.baseUrl = env("TRP_BASE_URL").replace(/\/+$/, "");
  const v1 = client.conversations.v1;

  const serviceSid =
    args.service || (await v1.services.create({ friendlyName: "sdk-node" })).sid;
  const service = v1.services(serviceSid);
  const conversationSid =
    args.conversation ||
    (await service.conversations.create({ friendlyName: "sdk-node" })).sid;
  const participants = () => service.conversations(conversationSid).participants;

  const steps = {};
  steps.create = await attempt(() => participants().create({ identity: args.identity }));
  if (!steps.create.ok) fail(`first create failed: ${JSON.stringify(steps.create)}`);
  const firstSid = steps.create.ok.sid;
  steps.delete = await attempt(
    () => service.conversations(conversationSid).participants(firstSid).remove(),
    (r) => r,
  );
  steps.readd = await attempt(() => participants().create({ identity: args.identity }));
  steps.readd_again = await attempt(() => participants().create({ identity: args.identity }));

  if (args.duplicate) {
    steps.duplicate_first = await attempt(() =>
      participants().create({ identity: args.duplicate }),
    );
    steps.duplicate = await attempt(() => participants().create({ identity: args.duplicate }));
  }

  if (args.missingConversation) {
    steps.missing_conversation = await attempt(() =>
      service.conversations(MISSING_CONVERSATION).participants.create({ identity: args.identity }),
    );
  }

  if (args.extra) {
    for (let i = 0; i < args.extra; i++) {
      steps[`extra_${i}`] = await attempt(() =>
        participants().create({ identity: `extra-${i}` }),
      );
    }
    steps.list = await attempt(
      () => participants().list({ pageSize: args.pageSize }),
      (ps) => ps.map(participant),
    );
  }

  steps.fetch = await attempt(() =>
    service.conversations(conversationSid).participants(args.identity).fetch(),
  );

  if (args.user) {
    steps.user_create = await attempt(
      () =>
        service.users.create({
          identity: args.user,
          friendlyName: "SDK User",
          attributes: '{"tier":1}',
        }),
      user,
    );
    steps.user_update = await attempt(
      () => service.users(args.user).update({ friendlyName: "Renamed User" }),
      user,
    );
    steps.user_fetch = await attempt(() => service.users(args.user).fetch(), user);
    steps.participant_update = await attempt(
      () =>
        service
          .conversations(conversationSid)
          .participants(args.identity)
          .update({ attributes: '{"seat":3}' }),
      (p) => ({ ...participant(p), attributes: p.attributes }),
    );
    steps.user_delete = await attempt(() => service.users(args.user).remove(), (r) => r);
  }

  process.stdout.write(
    JSON.stringify({
      library: "twilio-node",
      version,
      service_sid: serviceSid,
      conversation_sid: conversationSid,
      steps,
    }) + "\n",
  );
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));

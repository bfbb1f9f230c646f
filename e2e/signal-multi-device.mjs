// End-to-end test of Kisse's multi-device envelopes (issue 19) with the official Signal library,
// @signalapp/libsignal-client: every key, session and ciphertext below is libsignal's own (PQXDH
// session setup, Double Ratchet); this script only moves bytes between libsignal and the server,
// as a Signal client would. Nothing here is crypto of our own.
//
// Alice (devices 1 and 2) and Bob (devices 1 and 2) publish their keys; Alice's device 1 sends
// one message with an envelope per device of Bob, and a sync message to her own device 2; each
// device gets only its own envelope (live or by offline catch-up), decrypts it and acknowledges
// it; Alice is told per device; device-list mismatches are refused; Bob's device 2 answers and
// Alice's devices decrypt the answer.
//
// Usage: KISSE_URL=http://127.0.0.1:8080 node e2e/signal-multi-device.mjs
// (scripts/e2e-signal.sh starts a server, installs the dependencies with `npm ci` and runs it.)
// Exits 0 when every check passed; otherwise prints which step and frame failed and exits 1,
// within 60 seconds in any case.

import { randomInt, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import * as Signal from '@signalapp/libsignal-client';
import WebSocket from 'ws';

// ---------------------------------------------------------------------------------------------
// Failing loudly, and in bounded time

const TOTAL_BUDGET_MS = 55_000;
const FRAME_WAIT_MS = 5_000;
/// How long "nothing more arrives" is watched for (the server answers locally in milliseconds).
const QUIET_MS = 400;

let currentStep = 'start';
const sockets = new Set();

class CheckFailed extends Error {}

function fail(message) {
  throw new CheckFailed(message);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function ok(message) {
  console.log(`  ok: ${message}`);
}

function step(name) {
  currentStep = name;
  console.log(`== ${name}`);
}

function die(message) {
  console.error(`FAIL [${currentStep}]: ${message}`);
  for (const socket of sockets) socket.terminate();
  process.exit(1);
}

// Not unref'd: it also keeps the event loop alive, so a wait that nothing wakes cannot end the
// process early with a false exit 0.
setTimeout(() => die(`timed out after ${TOTAL_BUDGET_MS / 1000} s`), TOTAL_BUDGET_MS);

const BASE_URL = (process.env.KISSE_URL ?? '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(BASE_URL)) die('KISSE_URL must be the server base URL, e.g. http://127.0.0.1:8080');
const WS_URL = BASE_URL.replace(/^http/, 'ws');

// ---------------------------------------------------------------------------------------------
// Wire helpers

const b64 = (bytes) => Buffer.from(bytes).toString('base64');
/// libsignal wants plain Uint8Arrays over their own ArrayBuffer.
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'));
const utf8 = (text) => new TextEncoder().encode(text);
const fromUtf8 = (bytes) => new TextDecoder().decode(bytes);
const sameBytes = (a, b) => Buffer.from(a).equals(Buffer.from(b));

/// A payload field in either key style (the server sends both).
function field(payload, camel) {
  if (payload == null) return undefined;
  if (camel in payload) return payload[camel];
  const snake = camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  return payload[snake];
}

const sorted = (list) => [...(list ?? [])].map(Number).sort((a, b) => a - b);
const sameSet = (list, expected) => JSON.stringify(sorted(list)) === JSON.stringify(sorted(expected));

function summary(frame) {
  const text = JSON.stringify(frame);
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

async function api(method, path, { token, body, expect } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(`${BASE_URL}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(FRAME_WAIT_MS),
    });
  } catch (error) {
    fail(`${method} ${path}: no answer (${error.message})`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Kept as text for the message below.
  }
  if (expect !== undefined && response.status !== expect) {
    fail(`${method} ${path}: expected HTTP ${expect}, got ${response.status}: ${text.slice(0, 500)}`);
  }
  return { status: response.status, json, text };
}

/// One WebSocket connection of one device. Frames are kept in arrival order; `next` takes the
/// first one not taken yet that matches, so unrelated frames (presence, prekeys_low...) never get
/// in the way, while `messages()` still sees every `message` frame the socket ever got.
class Socket {
  constructor(label, ws) {
    this.label = label;
    this.ws = ws;
    this.frames = [];
    this.taken = new Set();
    this.closed = null;
    this.wake = () => {};
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        this.frames.push({ type: '(binary frame)', payload: {} });
      } else {
        try {
          this.frames.push(JSON.parse(data.toString()));
        } catch {
          this.frames.push({ type: '(not JSON)', payload: { text: data.toString() } });
        }
      }
      this.wake();
    });
    // A broken connection is reported by its 'close' (and by the waits that then fail).
    ws.on('error', () => {});
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      sockets.delete(ws);
      this.wake();
    });
  }

  /// Opens `/ws` as `device`'s session, naming its device in the query.
  static open(device, { queryDevice = device.id } = {}) {
    const label = `${device.label} socket`;
    const url = `${WS_URL}/ws?token=${encodeURIComponent(device.token)}&device_id=${queryDevice}`;
    const ws = new WebSocket(url, { handshakeTimeout: FRAME_WAIT_MS });
    sockets.add(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new Socket(label, ws)));
      ws.once('unexpected-response', (_request, response) => {
        sockets.delete(ws);
        reject(new CheckFailed(`${label}: upgrade refused with HTTP ${response.statusCode}`));
        response.resume();
        ws.terminate();
      });
      ws.once('error', (error) => reject(new CheckFailed(`${label}: ${error.message}`)));
    });
  }

  /// The upgrade's HTTP status when `open` is expected to be refused.
  static async refusal(device, queryDevice) {
    const url = `${WS_URL}/ws?token=${encodeURIComponent(device.token)}&device_id=${queryDevice}`;
    const ws = new WebSocket(url, { handshakeTimeout: FRAME_WAIT_MS });
    return new Promise((resolve) => {
      ws.once('open', () => {
        ws.terminate();
        resolve('open');
      });
      ws.once('unexpected-response', (_request, response) => {
        response.resume();
        ws.terminate();
        resolve(response.statusCode);
      });
      ws.once('error', (error) => resolve(`error: ${error.message}`));
    });
  }

  send(type, payload) {
    this.ws.send(JSON.stringify({ type, payload }));
  }

  /// The first frame not taken yet that is of `type` (or one of several) and satisfies `match`;
  /// fails after `ms`.
  async next(type, what, match = () => true, ms = FRAME_WAIT_MS) {
    const types = Array.isArray(type) ? type : [type];
    const deadline = Date.now() + ms;
    for (;;) {
      for (let i = 0; i < this.frames.length; i++) {
        const frame = this.frames[i];
        if (!this.taken.has(i) && types.includes(frame.type) && match(frame.payload ?? {})) {
          this.taken.add(i);
          return { type: frame.type, payload: frame.payload ?? {}, index: i };
        }
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.closed) {
        const state = this.closed
          ? `socket closed (${this.closed.code} ${this.closed.reason})`
          : `nothing within ${ms} ms`;
        const seen = this.frames.map((f, i) => `    #${i}${this.taken.has(i) ? ' (taken)' : ''} ${summary(f)}`);
        fail(`${this.label}: expected ${what}: ${state}; frames received:\n${seen.join('\n') || '    (none)'}`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 50));
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /// Every `message` frame this socket got, in order.
  messages() {
    return this.frames.filter((f) => f.type === 'message').map((f) => f.payload ?? {});
  }

  framesOf(type) {
    return this.frames.filter((f) => f.type === type).map((f) => f.payload ?? {});
  }

  async close() {
    if (this.closed) return;
    const closed = new Promise((resolve) => this.ws.once('close', resolve));
    this.ws.close(1000);
    await Promise.race([closed, sleep(FRAME_WAIT_MS)]);
    if (!this.closed) this.ws.terminate();
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// libsignal's stores, in memory (a real client keeps them on disk)

const addressKey = (address) => `${address.name()}.${address.deviceId()}`;

class MemorySessionStore extends Signal.SessionStore {
  #sessions = new Map();
  async saveSession(address, record) {
    this.#sessions.set(addressKey(address), record.serialize());
  }
  async getSession(address) {
    const bytes = this.#sessions.get(addressKey(address));
    return bytes ? Signal.SessionRecord.deserialize(bytes) : null;
  }
  async getExistingSessions(addresses) {
    return Promise.all(
      addresses.map(async (address) => {
        const record = await this.getSession(address);
        if (!record) throw new Error(`no session with ${addressKey(address)}`);
        return record;
      }),
    );
  }
}

/// Trust on first use, as Signal does before safety numbers are verified.
class MemoryIdentityStore extends Signal.IdentityKeyStore {
  #known = new Map();
  constructor(pair, registrationId) {
    super();
    this.pair = pair;
    this.registrationId = registrationId;
  }
  async getIdentityKey() {
    return this.pair.privateKey;
  }
  async getLocalRegistrationId() {
    return this.registrationId;
  }
  async saveIdentity(address, key) {
    const old = this.#known.get(addressKey(address));
    this.#known.set(addressKey(address), key.serialize());
    return old && !sameBytes(old, key.serialize())
      ? Signal.IdentityChange.ReplacedExisting
      : Signal.IdentityChange.NewOrUnchanged;
  }
  async isTrustedIdentity(address, key) {
    const old = this.#known.get(addressKey(address));
    return !old || sameBytes(old, key.serialize());
  }
  async getIdentity(address) {
    const bytes = this.#known.get(addressKey(address));
    return bytes ? Signal.PublicKey.deserialize(bytes) : null;
  }
}

class MemoryPreKeyStore extends Signal.PreKeyStore {
  #keys = new Map();
  async savePreKey(id, record) {
    this.#keys.set(id, record.serialize());
  }
  async getPreKey(id) {
    const bytes = this.#keys.get(id);
    if (!bytes) throw new Error(`no one-time prekey ${id}`);
    return Signal.PreKeyRecord.deserialize(bytes);
  }
  async removePreKey(id) {
    this.#keys.delete(id);
  }
}

class MemorySignedPreKeyStore extends Signal.SignedPreKeyStore {
  #keys = new Map();
  async saveSignedPreKey(id, record) {
    this.#keys.set(id, record.serialize());
  }
  async getSignedPreKey(id) {
    const bytes = this.#keys.get(id);
    if (!bytes) throw new Error(`no signed prekey ${id}`);
    return Signal.SignedPreKeyRecord.deserialize(bytes);
  }
}

/// Only a last-resort Kyber key (the directory's `pq_last_resort_prekey`): used, never removed.
class MemoryKyberPreKeyStore extends Signal.KyberPreKeyStore {
  #keys = new Map();
  async saveKyberPreKey(id, record) {
    this.#keys.set(id, record.serialize());
  }
  async getKyberPreKey(id) {
    const bytes = this.#keys.get(id);
    if (!bytes) throw new Error(`no Kyber prekey ${id}`);
    return Signal.KyberPreKeyRecord.deserialize(bytes);
  }
  async markKyberPreKeyUsed() {}
}

// ---------------------------------------------------------------------------------------------
// Users and devices

/// Above PREKEY_LOW_THRESHOLD (10) after a fetch, so no device is nagged with `prekeys_low`.
const ONE_TIME_PREKEYS = 12;
const PASSWORD = 'correct horse battery staple';
const RUN = randomUUID().slice(0, 8);

class Device {
  constructor(user, id) {
    this.user = user;
    this.id = id;
    this.label = `${user.name} device ${id}`;
    this.address = Signal.ProtocolAddress.new(user.id, id);
    this.identity = Signal.IdentityKeyPair.generate();
    // As libsignal clients do: 14 bits, never 0.
    this.registrationId = randomInt(1, 16381);
    this.sessions = new MemorySessionStore();
    this.identities = new MemoryIdentityStore(this.identity, this.registrationId);
    this.preKeys = new MemoryPreKeyStore();
    this.signedPreKeys = new MemorySignedPreKeyStore();
    this.kyberPreKeys = new MemoryKyberPreKeyStore();
  }

  /// Generates this device's keys with libsignal and publishes their public halves.
  async publishKeys() {
    const now = Date.now();
    const signedId = randomInt(1, 0xffffff);
    const signedPrivate = Signal.PrivateKey.generate();
    const signedPublic = signedPrivate.getPublicKey();
    const signedSignature = this.identity.privateKey.sign(signedPublic.serialize());
    await this.signedPreKeys.saveSignedPreKey(
      signedId,
      Signal.SignedPreKeyRecord.new(signedId, now, signedPublic, signedPrivate, signedSignature),
    );

    const kyberId = randomInt(1, 0xffffff);
    const kyberPair = Signal.KEMKeyPair.generate();
    const kyberSignature = this.identity.privateKey.sign(kyberPair.getPublicKey().serialize());
    await this.kyberPreKeys.saveKyberPreKey(
      kyberId,
      Signal.KyberPreKeyRecord.new(kyberId, now, kyberPair, kyberSignature),
    );

    const firstPreKey = randomInt(1, 0xffffff - ONE_TIME_PREKEYS);
    const oneTime = [];
    for (let keyId = firstPreKey; keyId < firstPreKey + ONE_TIME_PREKEYS; keyId++) {
      const privateKey = Signal.PrivateKey.generate();
      await this.preKeys.savePreKey(keyId, Signal.PreKeyRecord.new(keyId, privateKey.getPublicKey(), privateKey));
      oneTime.push({ key_id: keyId, public_key: b64(privateKey.getPublicKey().serialize()) });
    }

    const { json } = await api('PUT', '/api/keys', {
      token: this.token,
      expect: 200,
      body: {
        device_id: this.id,
        registration_id: this.registrationId,
        identity_key: b64(this.identity.publicKey.serialize()),
        signed_prekey: { key_id: signedId, public_key: b64(signedPublic.serialize()), signature: b64(signedSignature) },
        one_time_prekeys: oneTime,
        pq_last_resort_prekey: {
          key_id: kyberId,
          public_key: b64(kyberPair.getPublicKey().serialize()),
          signature: b64(kyberSignature),
        },
      },
    });
    check(
      field(json, 'deviceId') === this.id && field(json, 'count') === ONE_TIME_PREKEYS,
      `${this.label}: PUT /api/keys answered ${JSON.stringify(json)}, expected device ${this.id} with ${ONE_TIME_PREKEYS} one-time prekeys`,
    );
  }

  /// Starts a PQXDH session with each device of a bundle answer (GET /api/keys/...).
  async startSessions(bundlesAnswer, expectedDevices) {
    const bundles = bundlesAnswer.devices ?? [];
    const ids = bundles.map((b) => field(b, 'deviceId'));
    check(
      sameSet(ids, expectedDevices.map((d) => d.id)),
      `${this.label}: bundles for devices [${ids}], expected [${expectedDevices.map((d) => d.id)}]`,
    );
    for (const device of expectedDevices) {
      const b = bundles.find((x) => field(x, 'deviceId') === device.id);
      const identityKey = Signal.PublicKey.deserialize(unb64(field(b, 'identityKey')));
      check(
        sameBytes(identityKey.serialize(), device.identity.publicKey.serialize()),
        `${this.label}: the directory's identity key for ${device.label} is not the one it uploaded`,
      );
      check(
        field(b, 'registrationId') === device.registrationId,
        `${this.label}: bundle of ${device.label} has registration id ${field(b, 'registrationId')}, uploaded ${device.registrationId}`,
      );
      const signed = field(b, 'signedPrekey');
      const oneTime = field(b, 'oneTimePrekey');
      const kyber = field(b, 'pqLastResortPrekey');
      check(oneTime, `${this.label}: bundle of ${device.label} has no one-time prekey left`);
      check(kyber, `${this.label}: bundle of ${device.label} has no Kyber prekey (PQXDH needs one)`);
      const bundle = Signal.PreKeyBundle.new(
        field(b, 'registrationId'),
        device.id,
        field(oneTime, 'keyId'),
        Signal.PublicKey.deserialize(unb64(field(oneTime, 'publicKey'))),
        field(signed, 'keyId'),
        Signal.PublicKey.deserialize(unb64(field(signed, 'publicKey'))),
        unb64(field(signed, 'signature')),
        identityKey,
        field(kyber, 'keyId'),
        Signal.KEMPublicKey.deserialize(unb64(field(kyber, 'publicKey'))),
        unb64(field(kyber, 'signature')),
      );
      // Verifies both signatures against the identity key and runs PQXDH.
      await Signal.processPreKeyBundle(bundle, device.address, this.address, this.sessions, this.identities);
    }
  }

  /// A libsignal ciphertext of `text` for `device`, as an envelope of a `message` frame.
  async envelopeFor(device, text, { registrationId = device.registrationId } = {}) {
    const ciphertext = await Signal.signalEncrypt(utf8(text), device.address, this.address, this.sessions, this.identities);
    return { deviceId: device.id, registrationId, type: ciphertext.type(), content: b64(ciphertext.serialize()) };
  }

  /// Decrypts an envelope received from `sender` with libsignal.
  async decrypt(envelope, sender) {
    try {
      return await this.#decrypt(envelope, sender);
    } catch (error) {
      if (error instanceof CheckFailed) throw error;
      return fail(`${this.label}: libsignal could not decrypt the envelope from ${sender.label}: ${error.message}`);
    }
  }

  async #decrypt(envelope, sender) {
    const type = field(envelope, 'type');
    const bytes = unb64(field(envelope, 'content'));
    if (type === Signal.CiphertextMessageType.PreKey) {
      return fromUtf8(
        await Signal.signalDecryptPreKey(
          Signal.PreKeySignalMessage.deserialize(bytes),
          sender.address,
          this.address,
          this.sessions,
          this.identities,
          this.preKeys,
          this.signedPreKeys,
          this.kyberPreKeys,
        ),
      );
    }
    if (type === Signal.CiphertextMessageType.Whisper) {
      return fromUtf8(
        await Signal.signalDecrypt(Signal.SignalMessage.deserialize(bytes), sender.address, this.address, this.sessions, this.identities),
      );
    }
    return fail(`${this.label}: envelope of unexpected type ${type}`);
  }
}

async function newUser(name) {
  const username = `e2e_${name.toLowerCase()}_${RUN}`;
  const email = `${username}@example.com`;
  const { json } = await api('POST', '/api/auth/register', {
    expect: 201,
    body: { email, username, password: PASSWORD, name },
  });
  const user = { name, email, id: json?.user?.id };
  check(typeof user.id === 'string', `register ${name}: no user id in ${JSON.stringify(json)}`);
  user.devices = [new Device(user, 1), new Device(user, 2)];
  return user;
}

/// A session bound to the device (SPEC19: `device_id` at login).
async function login(device) {
  const { json } = await api('POST', '/api/auth/login', {
    expect: 200,
    body: { email: device.user.email, password: PASSWORD, device_id: device.id, device_name: `e2e ${device.label}` },
  });
  check(typeof json?.token === 'string', `login ${device.label}: no token in ${JSON.stringify(json)}`);
  device.token = json.token;
}

// ---------------------------------------------------------------------------------------------
// Expectations on frames

/// The `message` frame carrying envelope `id` for `device`; checks its metadata.
async function expectEnvelope(socket, device, { id, sender, recipient, type }) {
  const { payload, index } = await socket.next(
    'message',
    `a message frame with id ${id}`,
    (p) => field(p, 'id') === id || field(p, 'messageId') === id,
  );
  const envelope = field(payload, 'envelope');
  const where = `${socket.label}: message ${id} (frame #${index})`;
  check(envelope && typeof envelope === 'object', `${where} has no envelope: ${summary(payload)}`);
  check(field(payload, 'deviceId') === device.id, `${where}: deviceId ${field(payload, 'deviceId')}, expected ${device.id}`);
  check(field(payload, 'senderId') === sender.user.id, `${where}: senderId ${field(payload, 'senderId')}, expected ${sender.user.id}`);
  check(
    field(payload, 'recipientId') === recipient.id,
    `${where}: recipientId ${field(payload, 'recipientId')}, expected ${recipient.id}`,
  );
  check(
    field(envelope, 'sourceDeviceId') === sender.id,
    `${where}: envelope.sourceDeviceId ${field(envelope, 'sourceDeviceId')}, expected ${sender.id}`,
  );
  check(field(envelope, 'type') === type, `${where}: envelope.type ${field(envelope, 'type')}, expected ${type}`);
  check(Number.isInteger(field(envelope, 'cursor')), `${where}: envelope.cursor is not an integer: ${summary(envelope)}`);
  return { payload, envelope, index };
}

/// `queue_empty`, after every frame before `afterIndex` (the backlog comes first).
async function expectQueueEmpty(socket, afterIndex = -1) {
  const { index } = await socket.next('queue_empty', 'queue_empty once the backlog is written');
  check(index > afterIndex, `${socket.label}: queue_empty (frame #${index}) came before the backlog's message (#${afterIndex})`);
  return index;
}

async function expectAck(socket, clientId, { self = false } = {}) {
  const { type, payload } = await socket.next(['message_ack', 'error'], `message_ack for ${clientId}`, (p) =>
    [field(p, 'clientId'), field(p, 'id')].includes(clientId),
  );
  check(type === 'message_ack', `${socket.label}: message ${clientId} was refused: ${summary(payload)}`);
  if (self) {
    check(
      field(payload, 'conversationId') == null,
      `${socket.label}: message_ack of a message to oneself carries conversationId ${field(payload, 'conversationId')} (SPEC19: absent for self)`,
    );
  }
  return payload;
}

async function expectReceipt(socket, messageId, device) {
  const { payload } = await socket.next(
    'delivery_receipt',
    `delivery_receipt for ${messageId} from ${device.label}`,
    (p) => field(p, 'messageId') === messageId && field(p, 'deviceId') === device.id,
  );
  check(
    field(payload, 'recipientId') === device.user.id,
    `${socket.label}: delivery_receipt recipientId ${field(payload, 'recipientId')}, expected ${device.user.id}`,
  );
  return payload;
}

async function expectError(socket, clientId, code) {
  const { type, payload } = await socket.next(['error', 'message_ack'], `an error frame ${code} for ${clientId}`, (p) =>
    [field(p, 'clientId'), field(p, 'id')].includes(clientId),
  );
  check(type === 'error', `${socket.label}: message ${clientId} was stored (message_ack), expected error ${code}`);
  check(field(payload, 'code') === code, `${socket.label}: error for ${clientId} is ${summary(payload)}, expected code ${code}`);
  return payload;
}

function expectNoMessagesBut(socket, ids) {
  const got = socket.messages().map((p) => field(p, 'id') ?? field(p, 'messageId'));
  const extra = got.filter((id) => !ids.includes(id));
  check(
    extra.length === 0,
    `${socket.label}: got message frames it should not have: ${socket
      .messages()
      .filter((p) => extra.includes(field(p, 'id') ?? field(p, 'messageId')))
      .map(summary)
      .join(', ')}`,
  );
}

/// A reconnect of a device whose queue is empty: `queue_empty` and not one `message`.
async function expectNothingQueued(device) {
  const socket = await Socket.open(device);
  await expectQueueEmpty(socket);
  await sleep(QUIET_MS);
  expectNoMessagesBut(socket, []);
  return socket;
}

// ---------------------------------------------------------------------------------------------
// The scenario

async function main() {
  const { version } = JSON.parse(
    readFileSync(new URL('./node_modules/@signalapp/libsignal-client/package.json', import.meta.url), 'utf8'),
  );
  console.log(`@signalapp/libsignal-client ${version} against ${BASE_URL}`);

  step('1. register Alice and Bob; log in each device with device_id (device-bound sessions)');
  const alice = await newUser('Alice');
  const bob = await newUser('Bob');
  const [alice1, alice2] = alice.devices;
  const [bob1, bob2] = bob.devices;
  for (const device of [alice1, alice2, bob1, bob2]) await login(device);
  ok('4 device-bound sessions');
  const refused = await Socket.refusal(alice2, 1);
  check(refused === 400, `a socket of Alice device 2's bound session naming device_id=1: expected HTTP 400, got ${refused}`);
  ok("a bound session's socket naming another device is refused (400)");

  step('2. every device generates its keys with libsignal and publishes them (PUT /api/keys)');
  for (const device of [alice1, alice2, bob1, bob2]) await device.publishKeys();
  ok('identity key, registration id, signed prekey, Kyber last-resort prekey, one-time prekeys x4 devices');

  step("3. Alice device 1 fetches Bob's bundles and her device 2's, starts PQXDH sessions");
  const bobBundles = (await api('GET', `/api/keys/${bob.id}`, { token: alice1.token, expect: 200 })).json;
  await alice1.startSessions(bobBundles, [bob1, bob2]);
  const alice2Bundle = (await api('GET', `/api/keys/${alice.id}/2`, { token: alice1.token, expect: 200 })).json;
  await alice1.startSessions(alice2Bundle, [alice2]);
  ok('sessions with Bob devices 1, 2 and Alice device 2');

  step('4a. Alice device 1 and Bob device 1 connect; Alice sends one message to Bob (2 envelopes) and a sync to herself');
  const aliceSocket = await Socket.open(alice1);
  await expectQueueEmpty(aliceSocket);
  const bob1Socket = await Socket.open(bob1);
  await expectQueueEmpty(bob1Socket);
  ok('both get queue_empty on connect (nothing queued)');

  const toBob = randomUUID();
  const textFor = (device) => `hello ${device.label} from Alice device 1 (${toBob})`;
  const syncText = `sync to Alice device 2: sent "${textFor(bob1)}" to Bob`;
  aliceSocket.send('message', {
    recipientId: bob.id,
    messageType: 'signal',
    id: toBob,
    envelopes: [await alice1.envelopeFor(bob1, textFor(bob1)), await alice1.envelopeFor(bob2, textFor(bob2))],
  });
  await expectAck(aliceSocket, toBob);
  ok('message_ack for the message to Bob');
  const toSelf = randomUUID();
  aliceSocket.send('message', {
    recipientId: alice.id,
    messageType: 'signal',
    id: toSelf,
    envelopes: [await alice1.envelopeFor(alice2, syncText)],
  });
  await expectAck(aliceSocket, toSelf, { self: true });
  ok('message_ack for the sync to herself (no conversationId)');

  step('4b. Bob device 1 (online) gets its envelope live, decrypts it, acks');
  {
    const { envelope } = await expectEnvelope(bob1Socket, bob1, {
      id: toBob,
      sender: alice1,
      recipient: bob,
      type: Signal.CiphertextMessageType.PreKey,
    });
    const plaintext = await bob1.decrypt(envelope, alice1);
    check(plaintext === textFor(bob1), `Bob device 1 decrypted "${plaintext}", expected "${textFor(bob1)}"`);
    ok('Bob device 1 decrypted its PreKeySignalMessage');
    bob1Socket.send('ack', { id: toBob });
    await expectReceipt(aliceSocket, toBob, bob1);
    ok('Alice got delivery_receipt with deviceId 1');
  }

  step('4c. Bob device 2 connects after the send (offline catch-up), decrypts; an unacked envelope comes back');
  let bob2Cursor;
  {
    let bob2Socket = await Socket.open(bob2);
    const first = await expectEnvelope(bob2Socket, bob2, {
      id: toBob,
      sender: alice1,
      recipient: bob,
      type: Signal.CiphertextMessageType.PreKey,
    });
    await expectQueueEmpty(bob2Socket, first.index);
    const plaintext = await bob2.decrypt(first.envelope, alice1);
    check(plaintext === textFor(bob2), `Bob device 2 decrypted "${plaintext}", expected "${textFor(bob2)}"`);
    ok('Bob device 2 got its envelope from the backlog, then queue_empty, and decrypted it');
    // Closed without an ack: the envelope must wait for the next connect, and Alice must not be
    // told it was delivered.
    await bob2Socket.close();
    await sleep(QUIET_MS);
    const early = aliceSocket
      .framesOf('delivery_receipt')
      .filter((p) => field(p, 'messageId') === toBob && field(p, 'deviceId') === 2);
    check(early.length === 0, `Alice got a delivery_receipt for Bob device 2 before it acked: ${early.map(summary)}`);

    bob2Socket = await Socket.open(bob2);
    const again = await expectEnvelope(bob2Socket, bob2, {
      id: toBob,
      sender: alice1,
      recipient: bob,
      type: Signal.CiphertextMessageType.PreKey,
    });
    await expectQueueEmpty(bob2Socket, again.index);
    check(
      field(again.envelope, 'content') === field(first.envelope, 'content'),
      'Bob device 2: the envelope sent again after reconnect is not the same ciphertext',
    );
    ok('the unacked envelope came back, same ciphertext (deduped by id: not decrypted twice)');
    bob2Cursor = field(again.envelope, 'cursor');
    bob2Socket.send('ack', { id: toBob });
    await expectReceipt(aliceSocket, toBob, bob2);
    ok('Alice got delivery_receipt with deviceId 2');
    expectNoMessagesBut(bob2Socket, [toBob]);
    await bob2Socket.close();
  }
  check(Number.isInteger(bob2Cursor), 'Bob device 2: no cursor');

  step('4d. Alice device 2 connects after the send, gets the sync envelope, decrypts, acks by cursor');
  {
    const alice2Socket = await Socket.open(alice2);
    const { envelope, index } = await expectEnvelope(alice2Socket, alice2, {
      id: toSelf,
      sender: alice1,
      recipient: alice,
      type: Signal.CiphertextMessageType.PreKey,
    });
    await expectQueueEmpty(alice2Socket, index);
    const plaintext = await alice2.decrypt(envelope, alice1);
    check(plaintext === syncText, `Alice device 2 decrypted "${plaintext}", expected "${syncText}"`);
    ok('Alice device 2 decrypted the sync message from her device 1');
    alice2Socket.send('ack', { cursor: field(envelope, 'cursor') });
    await sleep(QUIET_MS);
    expectNoMessagesBut(alice2Socket, [toSelf]);
    await alice2Socket.close();
  }

  step('5. receipts: one per Bob device, none for the self-sync; acked devices get nothing again');
  {
    const receipts = aliceSocket.framesOf('delivery_receipt');
    const forBob = receipts.filter((p) => field(p, 'messageId') === toBob);
    check(
      sameSet(
        forBob.map((p) => field(p, 'deviceId')),
        [1, 2],
      ),
      `Alice: delivery_receipts for the message to Bob: ${forBob.map(summary)}; expected exactly one with deviceId 1 and one with 2`,
    );
    const forSelf = receipts.filter((p) => field(p, 'messageId') === toSelf);
    check(forSelf.length === 0, `Alice got a delivery_receipt for her self-sync: ${forSelf.map(summary)}`);
    ok('exactly one delivery_receipt per Bob device, none for the self-sync');
    expectNoMessagesBut(aliceSocket, []);
    expectNoMessagesBut(bob1Socket, [toBob]);
    ok("Alice device 1 got no envelope; Bob device 1 only its own");
    for (const device of [bob2, alice2]) {
      const socket = await expectNothingQueued(device);
      await socket.close();
    }
    ok('Bob device 2 and Alice device 2 (acked by id, by cursor) get only queue_empty on reconnect');
  }

  step('6. device-list mismatches store nothing');
  {
    const missing = randomUUID();
    aliceSocket.send('message', {
      recipientId: bob.id,
      messageType: 'signal',
      id: missing,
      envelopes: [await alice1.envelopeFor(bob1, 'never stored (device 2 left out)')],
    });
    const error = await expectError(aliceSocket, missing, 'mismatched_devices');
    check(
      sameSet(field(error, 'missingDevices'), [2]) && sameSet(field(error, 'extraDevices'), []),
      `mismatched_devices for a message leaving Bob device 2 out: ${summary(error)}; expected missingDevices [2], extraDevices []`,
    );
    ok('leaving Bob device 2 out: mismatched_devices, missingDevices [2]');

    const extra = randomUUID();
    aliceSocket.send('message', {
      recipientId: bob.id,
      messageType: 'signal',
      id: extra,
      envelopes: [
        await alice1.envelopeFor(bob1, 'never stored (extra device)'),
        await alice1.envelopeFor(bob2, 'never stored (extra device)'),
        { deviceId: 3, type: Signal.CiphertextMessageType.PreKey, content: b64(utf8('no such device')) },
      ],
    });
    const extraError = await expectError(aliceSocket, extra, 'mismatched_devices');
    check(
      sameSet(field(extraError, 'missingDevices'), []) && sameSet(field(extraError, 'extraDevices'), [3]),
      `mismatched_devices for a message to Bob devices 1, 2, 3: ${summary(extraError)}; expected missingDevices [], extraDevices [3]`,
    );
    ok('an envelope for a device Bob does not have: mismatched_devices, extraDevices [3]');

    const stale = randomUUID();
    const wrongId = (bob2.registrationId % 16380) + 1;
    aliceSocket.send('message', {
      recipientId: bob.id,
      messageType: 'signal',
      id: stale,
      envelopes: [
        await alice1.envelopeFor(bob1, 'never stored (stale)'),
        await alice1.envelopeFor(bob2, 'never stored (stale)', { registrationId: wrongId }),
      ],
    });
    const staleError = await expectError(aliceSocket, stale, 'stale_devices');
    check(
      sameSet(field(staleError, 'staleDevices'), [2]),
      `stale_devices for a wrong registrationId of Bob device 2: ${summary(staleError)}; expected staleDevices [2]`,
    );
    ok('a wrong registrationId for Bob device 2: stale_devices, staleDevices [2]');

    await sleep(QUIET_MS);
    expectNoMessagesBut(bob1Socket, [toBob]);
    const socket = await expectNothingQueued(bob2);
    await socket.close();
    ok('nothing of the refused messages reached Bob device 1 (online) or Bob device 2 (reconnect)');
  }

  step('7. Bob device 2 replies to both of Alice\'s devices; Alice device 1 and 2 decrypt');
  {
    const bob2Socket = await Socket.open(bob2);
    await expectQueueEmpty(bob2Socket);
    // Bob device 2 has a session with Alice device 1 (from her PreKeySignalMessage); for her
    // device 2 it fetches a bundle, as a Signal client does for a device it has not met.
    const bundle = (await api('GET', `/api/keys/${alice.id}/2`, { token: bob2.token, expect: 200 })).json;
    await bob2.startSessions(bundle, [alice2]);
    const reply = randomUUID();
    const replyText = (device) => `reply from Bob device 2 to ${device.label} (${reply})`;
    const toAlice1 = await bob2.envelopeFor(alice1, replyText(alice1));
    check(
      toAlice1.type === Signal.CiphertextMessageType.Whisper,
      `Bob device 2's reply to Alice device 1 is of type ${toAlice1.type}, expected a SignalMessage (${Signal.CiphertextMessageType.Whisper}) on the established session`,
    );
    bob2Socket.send('message', {
      recipientId: alice.id,
      messageType: 'signal',
      id: reply,
      envelopes: [toAlice1, await bob2.envelopeFor(alice2, replyText(alice2))],
    });
    await expectAck(bob2Socket, reply);

    const { envelope } = await expectEnvelope(aliceSocket, alice1, {
      id: reply,
      sender: bob2,
      recipient: alice,
      type: Signal.CiphertextMessageType.Whisper,
    });
    const plaintext = await alice1.decrypt(envelope, bob2);
    check(plaintext === replyText(alice1), `Alice device 1 decrypted "${plaintext}", expected "${replyText(alice1)}"`);
    ok('Alice device 1 decrypted the SignalMessage: the session works both ways');
    aliceSocket.send('ack', { id: reply });
    await expectReceipt(bob2Socket, reply, alice1);

    const alice2Socket = await Socket.open(alice2);
    const second = await expectEnvelope(alice2Socket, alice2, {
      id: reply,
      sender: bob2,
      recipient: alice,
      type: Signal.CiphertextMessageType.PreKey,
    });
    await expectQueueEmpty(alice2Socket, second.index);
    const plaintext2 = await alice2.decrypt(second.envelope, bob2);
    check(plaintext2 === replyText(alice2), `Alice device 2 decrypted "${plaintext2}", expected "${replyText(alice2)}"`);
    alice2Socket.send('ack', { id: reply });
    await expectReceipt(bob2Socket, reply, alice2);
    ok('Alice device 2 decrypted its PreKeySignalMessage; Bob got a receipt per Alice device');

    // And Alice answers on the ratcheted session: now a SignalMessage, not a PreKey one.
    const answer = randomUUID();
    const answerText = `Alice device 1 answers Bob device 2 (${answer})`;
    const toBob2 = await alice1.envelopeFor(bob2, answerText);
    check(
      toBob2.type === Signal.CiphertextMessageType.Whisper,
      `Alice device 1's answer to Bob device 2 is of type ${toBob2.type}, expected a SignalMessage once Bob replied`,
    );
    aliceSocket.send('message', {
      recipientId: bob.id,
      messageType: 'signal',
      id: answer,
      envelopes: [await alice1.envelopeFor(bob1, `Alice device 1 answers Bob device 1 (${answer})`), toBob2],
    });
    await expectAck(aliceSocket, answer);
    const third = await expectEnvelope(bob2Socket, bob2, {
      id: answer,
      sender: alice1,
      recipient: bob,
      type: Signal.CiphertextMessageType.Whisper,
    });
    const plaintext3 = await bob2.decrypt(third.envelope, alice1);
    check(plaintext3 === answerText, `Bob device 2 decrypted "${plaintext3}", expected "${answerText}"`);
    bob2Socket.send('ack', { id: answer });
    ok('Bob device 2 decrypted the ratcheted answer');

    for (const socket of [bob2Socket, alice2Socket]) await socket.close();
  }

  for (const socket of [aliceSocket, bob1Socket]) await socket.close();
  console.log('PASS: Signal multi-device end to end (libsignal-client, PQXDH, 4 devices)');
}

main().then(
  () => process.exit(0),
  (error) => die(error instanceof CheckFailed ? error.message : (error?.stack ?? String(error))),
);

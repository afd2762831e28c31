#!/usr/bin/env node
// Hostile NBD server scenarios run in a plain Node process, with real process-level
// 'uncaughtException' and 'unhandledRejection' handlers (Jest's sandbox hides those events from
// test code). Prints one JSON line: { scenarios: [{ name, outcome }], escaped: [...] }.
// With --control, one scenario deliberately leaves a rejection unhandled, to show the handlers
// see what they are meant to see. Uses the built package (dist/).
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdClient, NbdError } from '../../dist/index.js';

const escaped = [];
process.on('uncaughtException', (error) => escaped.push(`uncaughtException: ${error?.stack ?? error}`));
process.on('unhandledRejection', (error) => escaped.push(`unhandledRejection: ${error?.stack ?? error}`));

const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; };
const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); return b; };
const u16 = (v) => { const b = Buffer.alloc(2); b.writeUInt16BE(v); return b; };
const reply = (option, type, data = Buffer.alloc(0)) =>
  Buffer.concat([Buffer.from('0003e889045565a9', 'hex'), u32(option), u32(type), u32(data.length), data]);
const chunk = (handle, flags, type, payload) => Buffer.concat([u32(0x668e33ef), u16(flags), u16(type), u64(handle), u32(payload.length), payload]);

/** Serves one connection: a normal handshake (structured replies, a 1 MiB export), then `act`. */
async function scenario(name, act, { timeout } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'qmpkit-nbd-'));
  const path = join(dir, 'nbd.sock');
  const server = createServer((socket) => {
    let buffer = Buffer.alloc(0);
    let waiter;
    socket.on('data', (c) => { buffer = Buffer.concat([buffer, c]); waiter?.(); });
    socket.on('error', () => undefined);
    const read = async (n) => {
      while (buffer.length < n) await new Promise((r) => { waiter = r; });
      const out = buffer.subarray(0, n);
      buffer = buffer.subarray(n);
      return out;
    };
    (async () => {
      socket.write(Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT'), u16(3)]));
      await read(4);
      for (;;) {
        const header = await read(16);
        const option = header.readUInt32BE(8);
        await read(header.readUInt32BE(12));
        if (option === 7) {
          socket.write(Buffer.concat([reply(7, 3, Buffer.concat([u16(0), u64(1 << 20), u16(3)])), reply(7, 1)]));
          break;
        }
        socket.write(reply(option, 1));
      }
      const request = await read(28);
      await act(socket, Number(request.readBigUInt64BE(8)));
    })().catch(() => undefined);
  });
  await new Promise((resolve) => server.listen(path, resolve));
  let outcome;
  try {
    const client = await NbdClient.connect(path, { connectTimeout: 5000, requestTimeout: timeout });
    const result = await client.read(0, 4096).then(
      () => 'resolved',
      (error) => (NbdError.isInstance(error) ? `${error.name}${error.cause?.name ? `/${error.cause.name}` : ''}` : `unnamed: ${error}`),
    );
    await client.close({ timeout: 100 });
    outcome = result;
  } catch (error) {
    outcome = `connect failed: ${error}`;
  }
  await new Promise((resolve) => server.close(resolve));
  await rm(dir, { recursive: true, force: true });
  return { name, outcome };
}

const scenarios = [];
scenarios.push(await scenario('bad magic', (s) => s.write(Buffer.alloc(32, 0xab))));
scenarios.push(await scenario('wrong handle', (s, h) => s.write(chunk(h + 1, 1, 0, Buffer.alloc(0)))));
scenarios.push(await scenario('truncated structured reply', (s, h) => s.end(chunk(h, 1, 1, Buffer.alloc(4104)).subarray(0, 100))));
scenarios.push(await scenario('oversized chunk', (s, h) => { const c = chunk(h, 1, 1, Buffer.alloc(0)); c.writeUInt32BE(0xfffffff0, 16); s.write(c); }));
scenarios.push(await scenario('closing mid-reply', (s, h) => { s.write(chunk(h, 1, 1, Buffer.alloc(4104)).subarray(0, 2000)); s.destroy(); }));
scenarios.push(await scenario('silence', () => undefined, { timeout: 200 }));
let seed = 0x2545f491;
const random = () => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed; };
for (let i = 0; i < 30; i++) {
  const garbage = Buffer.from(Array.from({ length: 1 + (random() % 120) }, () => random() & 0xff));
  scenarios.push(await scenario(`fuzz ${i}`, (s, h) => s.write(Buffer.concat([chunk(h, random() & 3, random() & 0x8003, Buffer.alloc(0)).subarray(0, 16), garbage])), { timeout: 200 }));
}
if (process.argv.includes('--control')) {
  void Promise.reject(new Error('deliberately unhandled (control)'));
}
// Let anything that escaped surface before reporting.
await new Promise((resolve) => setTimeout(resolve, 50));
process.stdout.write(`${JSON.stringify({ scenarios, escaped })}\n`);

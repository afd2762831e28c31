import fc from 'fast-check';
import {
  ExtentFlag,
  NbdAbortError,
  NbdArgumentError,
  NbdClient,
  NbdCommandError,
  NbdConnectionError,
  NbdError,
  NbdHandshakeError,
  NbdProtocolError,
  NbdTimeoutError,
} from '../src/index.js';
import { rejectionOf, useFakeNbdServer } from './support/fake-server.js';
import * as wire from './support/wire.js';

const fx = useFakeNbdServer();
const MiB = 1024 * 1024;
const EXPORT = { size: 4 * MiB, contexts: ['base:allocation'] };

/** The error every pending request got when the server broke the protocol. */
async function protocolFailure(promise: Promise<unknown>, pattern: RegExp): Promise<NbdConnectionError> {
  const error = await rejectionOf(promise);
  expect(NbdConnectionError.isInstance(error)).toBe(true);
  const cause = (error as NbdConnectionError).cause;
  expect(NbdProtocolError.isInstance(cause)).toBe(true);
  expect((cause as Error).message).toMatch(pattern);
  return error as NbdConnectionError;
}

describe('transmission: violations end the connection with named errors', () => {
  test('bad magic rejects every pending request with one NbdConnectionError', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const reads = [client.read(0, 512), client.read(512, 512)];
    await connection.request();
    await connection.send(Buffer.from('deadbeef'.repeat(5), 'hex'));
    const first = await protocolFailure(reads[0]!, /bad reply magic 0xdeadbeef/);
    expect(await rejectionOf(reads[1]!)).toBe(first);
    expect(await client.closed).toBe(first);
    expect(client.state).toBe('closed');
    expect(await rejectionOf(client.read(0, 1))).toBe(first);
  });

  test('a reply to a handle that is not in flight', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 512);
    const request = await connection.request();
    await connection.send(wire.offsetData(request.handle + 1000, 0, Buffer.alloc(512), wire.DONE));
    await protocolFailure(read, new RegExp(`handle ${request.handle + 1000}, which is not in flight`));
  });

  test('a second reply to a request that is already complete', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 512);
    const request = await connection.request();
    await connection.send(wire.offsetData(request.handle, 0, Buffer.alloc(512, 1), wire.DONE));
    expect((await read)[0]).toBe(1);
    const next = client.read(0, 512);
    await connection.request();
    await connection.send(wire.none(request.handle));
    await protocolFailure(next, /not in flight/);
  });

  test('a truncated structured reply (server closes mid-chunk)', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 4096);
    const request = await connection.request();
    await connection.send(wire.offsetData(request.handle, 0, Buffer.alloc(4096), wire.DONE).subarray(0, 1000));
    connection.socket.end();
    const error = await protocolFailure(read, /ended inside a reply \(3124 byte\(s\) of an OFFSET_DATA chunk missing\)/);
    expect(error.message).toMatch(/middle of a reply/);
  });

  test('the server closing between replies fails what is pending', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 4096);
    await connection.request();
    connection.destroy();
    const error = await rejectionOf(read);
    expect(NbdConnectionError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/closed the connection|closed/);
  });

  test('an oversized data chunk is refused from its header, before the data', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 512);
    const request = await connection.request();
    const header = wire.chunk(request.handle, wire.DONE, wire.TYPE.OFFSET_DATA, Buffer.alloc(0));
    header.writeUInt32BE(0xffff_fff0, 16);
    await connection.send(header);
    await protocolFailure(read, /OFFSET_DATA chunk of 4294967272 byte\(s\) in the reply to a read of 512/);
  });

  test('an oversized block status chunk is refused from its header', async () => {
    const { client, connection } = await fx.connect(EXPORT, { metaContexts: ['base:allocation'] });
    const status = client.blockStatus(0, 4096);
    const request = await connection.request();
    const header = wire.chunk(request.handle, wire.DONE, wire.TYPE.BLOCK_STATUS, Buffer.alloc(0));
    header.writeUInt32BE(0x7fff_fffc, 16);
    await connection.send(header);
    await protocolFailure(status, /exceeds the limit/);
  });

  test('data outside the request, overlapping data, and success without full coverage', async () => {
    for (const [reply, pattern] of [
      [(h: number) => wire.offsetData(h, 4096, Buffer.alloc(512), wire.DONE), /outside the request \[0, 4096\)/],
      [(h: number) => Buffer.concat([wire.offsetData(h, 0, Buffer.alloc(600)), wire.offsetHole(h, 512, 100, wire.DONE)]), /overlaps data already received/],
      [(h: number) => Buffer.concat([wire.offsetData(h, 0, Buffer.alloc(512)), wire.none(h)]), /ended after covering 512/],
      [(h: number) => wire.simpleReply(h, 0, Buffer.alloc(4096)), /simple reply with data to a read/],
      [(h: number) => wire.blockStatus(h, 1, [[4096, 0]]), /block status chunk in the reply to read/],
    ] as const) {
      const { client, connection } = await fx.connect(EXPORT);
      const read = client.read(0, 4096);
      const request = await connection.request();
      await connection.send(reply(request.handle));
      await protocolFailure(read, pattern);
    }
  });

  test('block status: an unselected context id, a missing context, extents far past the request', async () => {
    const contexts = ['base:allocation', 'qemu:dirty-bitmap:b0'];
    for (const [reply, pattern] of [
      [(h: number) => wire.blockStatus(h, 9, [[4096, 0]]), /context id 9, which was not selected/],
      [(h: number) => wire.blockStatus(h, 1, [[4096, 0]]), /covered 1 of 2 selected context/],
      [(h: number) => Buffer.concat([wire.blockStatus(h, 1, [[4096, 0]], 0), wire.blockStatus(h, 1, [[4096, 0]])]), /two block status chunks/],
      [(h: number) => wire.blockStatus(h, 1, [[4096, 0], [4096, 1]]), /more extents than the request/],
    ] as const) {
      const { client, connection } = await fx.connect({ size: 4 * MiB, contexts }, { metaContexts: contexts });
      const status = client.blockStatus(0, 4096);
      const request = await connection.request();
      await connection.send(reply(request.handle));
      await protocolFailure(status, pattern);
    }
  });

  test('random bytes as a reply never escape: the read settles with a named error or data', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 200 }), async (garbage) => {
        const { client, connection } = await fx.connect(EXPORT, { requestTimeout: 200 });
        const read = client.read(0, 64);
        const request = await connection.request();
        // Half the runs start like a real reply to the right handle, so the fuzz gets past the magic.
        const head = garbage[0]! % 2 === 0 ? wire.chunk(request.handle, garbage[1] ?? 0, garbage[2] ?? 0, Buffer.alloc(0)).subarray(0, 16) : Buffer.alloc(0);
        await connection.send(Buffer.concat([head, Buffer.from(garbage)]));
        const outcome = await read.then((data) => data, (error: unknown) => error);
        if (!Buffer.isBuffer(outcome)) expect(NbdError.isInstance(outcome)).toBe(true);
        await client.close({ timeout: 100 });
        connection.destroy();
      }),
      { numRuns: 40 },
    );
  });
});

describe('silence, timeouts and aborts', () => {
  test('a silent server: the request times out, its late reply is consumed, the connection goes on', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const slow = client.read(0, 512, { timeout: 100 });
    const first = await connection.request();
    const error = await rejectionOf(slow);
    expect(NbdTimeoutError.isInstance(error)).toBe(true);
    expect((error as NbdTimeoutError).operation).toBe('read of 512 byte(s) at offset 0');
    expect(client.inFlight).toBe(1); // its reply is still due
    await connection.send(wire.offsetData(first.handle, 0, Buffer.alloc(512, 9), wire.DONE));
    const next = client.read(512, 512);
    const second = await connection.request();
    await connection.send(wire.offsetData(second.handle, 512, Buffer.alloc(512, 7), wire.DONE));
    expect((await next)[0]).toBe(7);
    expect(client.state).toBe('ready');
    expect(client.inFlight).toBe(0);
  });

  test('a server silent during the handshake: connect times out', async () => {
    const accepted = fx.server.accept();
    const started = Date.now();
    const error = await rejectionOf(NbdClient.connect(fx.server.path, { connectTimeout: 300 }));
    expect(NbdTimeoutError.isInstance(error)).toBe(true);
    expect(Date.now() - started).toBeLessThan(3000);
    const connection = await accepted;
    await connection.closed; // the client leaves nothing open
  });

  test('abort: the read rejects with NbdAbortError, already-aborted signals send nothing', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const controller = new AbortController();
    const read = client.read(0, 512, { signal: controller.signal });
    const request = await connection.request();
    controller.abort('user');
    const error = await rejectionOf(read);
    expect(NbdAbortError.isInstance(error)).toBe(true);
    expect((error as Error).cause).toBe('user');
    expect(NbdAbortError.isInstance(await rejectionOf(client.read(0, 1, { signal: controller.signal })))).toBe(true);
    await connection.send(wire.offsetHole(request.handle, 0, 512, wire.DONE)); // the late reply is taken without complaint
    const ok = client.read(0, 8);
    const r = await connection.request();
    expect(r.offset).toBe(0);
    await connection.send(wire.offsetHole(r.handle, 0, 8, wire.DONE));
    expect(await ok).toEqual(Buffer.alloc(8));
  });
});

describe('handshake refusals', () => {
  test('unknown export, missing context, no fixed newstyle, garbage greeting', async () => {
    let accepted = fx.server.accept();
    let connecting = rejectionOf(NbdClient.connect(fx.server.path, { exportName: 'nope' }));
    let connection = await accepted;
    await connection.send(wire.greeting());
    await connection.read(4);
    await connection.option(); // structured replies
    await connection.send(wire.ack(wire.OPT.STRUCTURED_REPLY));
    const go = await connection.option();
    expect(go.option).toBe(wire.OPT.GO);
    await connection.send(wire.optionError(wire.OPT.GO, wire.REP.ERR_UNKNOWN, 'export not found'));
    let error = await connecting;
    expect(NbdHandshakeError.isInstance(error)).toBe(true);
    expect((error as NbdHandshakeError).reply).toBe('NBD_REP_ERR_UNKNOWN');
    expect((error as NbdHandshakeError).serverMessage).toBe('export not found');
    expect((error as Error).message).toMatch(/export "nope" .*not found/);
    // The client ended option haggling with NBD_OPT_ABORT, the soft disconnect.
    expect((await connection.option()).option).toBe(wire.OPT.ABORT);

    accepted = fx.server.accept();
    connecting = rejectionOf(NbdClient.connect(fx.server.path, { metaContexts: ['qemu:dirty-bitmap:missing'] }));
    connection = await accepted;
    await connection.handshake({ size: MiB, contexts: [] }).catch(() => undefined);
    error = await connecting;
    expect(NbdHandshakeError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/does not offer the metadata context\(s\) qemu:dirty-bitmap:missing \(granted: none\)/);

    accepted = fx.server.accept();
    connecting = rejectionOf(NbdClient.connect(fx.server.path));
    connection = await accepted;
    await connection.send(wire.greeting(0));
    error = await connecting;
    expect(NbdHandshakeError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/fixed newstyle/);

    accepted = fx.server.accept();
    connecting = rejectionOf(NbdClient.connect(fx.server.path));
    connection = await accepted;
    await connection.send(Buffer.from('SSH-2.0-OpenSSH\r\n'));
    error = await connecting;
    expect(NbdProtocolError.isInstance(error)).toBe(true);
  });

  test('a server closing during the handshake', async () => {
    const accepted = fx.server.accept();
    const connecting = rejectionOf(NbdClient.connect(fx.server.path));
    const connection = await accepted;
    await connection.send(wire.greeting().subarray(0, 10));
    connection.destroy();
    expect(NbdConnectionError.isInstance(await connecting)).toBe(true);
  });

  test('bad arguments are refused before connecting', async () => {
    const error = await rejectionOf(NbdClient.connect(fx.server.path, { metaContexts: ['allocation'] }));
    expect(NbdArgumentError.isInstance(error)).toBe(true);
    expect(NbdArgumentError.isInstance(await rejectionOf(NbdClient.connect(fx.server.path, { maxInFlight: 0 })))).toBe(true);
  });
});

describe('requests', () => {
  test('replies out of order are matched by handle', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const a = client.read(0, 4);
    const b = client.read(4, 4);
    const ra = await connection.request();
    const rb = await connection.request();
    expect(ra.handle).not.toBe(rb.handle);
    await connection.send(Buffer.concat([
      wire.offsetData(rb.handle, 4, Buffer.from('bbbb'), wire.DONE),
      wire.offsetData(ra.handle, 2, Buffer.from('a2')),
      wire.offsetData(ra.handle, 0, Buffer.from('a0')),
      wire.none(ra.handle),
    ]));
    expect((await a).toString()).toBe('a0a2');
    expect((await b).toString()).toBe('bbbb');
  });

  test('an error chunk fails only its request; the connection stays usable', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(8192, 4096);
    const request = await connection.request();
    await connection.send(Buffer.concat([
      wire.offsetData(request.handle, 8192, Buffer.alloc(1024)),
      wire.errorChunk(request.handle, 5, 'medium error', 9216),
    ]));
    const error = await rejectionOf(read);
    expect(NbdCommandError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ command: 'read', offset: 8192, length: 4096, errno: 5, code: 'EIO', serverMessage: 'medium error', errorOffset: 9216 });
    const next = client.read(0, 2);
    const r = await connection.request();
    await connection.send(wire.simpleReply(r.handle, 22)); // an error may come as a simple reply
    expect(await rejectionOf(next)).toMatchObject({ code: 'EINVAL' });
    expect(client.state).toBe('ready');
  });

  test('reads are widened to the minimum block size and split at maxRequestSize', async () => {
    const { client, connection } = await fx.connect(
      { size: MiB, blockSize: { minimum: 4096, preferred: 4096, maximum: 8192 } },
      { maxRequestSize: 100_000 },
    );
    expect(client.maxRequestSize).toBe(8192);
    const read = client.read(4095, 8194); // [4095, 12289) -> [0, 16384): two requests of 8192
    const requests = [await connection.request(), await connection.request()];
    expect(requests.map((r) => [r.offset, r.length])).toEqual([[0, 8192], [8192, 8192]]);
    const image = Buffer.alloc(16384);
    for (let i = 0; i < image.length; i++) image[i] = (i * 7) & 0xff;
    await connection.send(wire.offsetData(requests[1]!.handle, 8192, image.subarray(8192), wire.DONE));
    await connection.send(wire.offsetData(requests[0]!.handle, 0, image.subarray(0, 8192), wire.DONE));
    expect((await read).equals(image.subarray(4095, 12289))).toBe(true);
    expect(NbdArgumentError.isInstance(await rejectionOf(client.read(MiB - 1, 2)))).toBe(true);
  });

  test('maxInFlight bounds the requests on the wire', async () => {
    const { client, connection } = await fx.connect(EXPORT, { maxInFlight: 2 });
    const reads = [0, 1, 2, 3].map((i) => client.read(i * 512, 512));
    const first = [await connection.request(), await connection.request()];
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(client.inFlight).toBe(2);
    await connection.send(wire.offsetHole(first[0]!.handle, 0, 512, wire.DONE));
    const third = await connection.request();
    expect(third.offset).toBe(1024);
    await connection.send(wire.offsetHole(first[1]!.handle, 512, 512, wire.DONE));
    const fourth = await connection.request();
    await connection.send(Buffer.concat([wire.offsetHole(third.handle, 1024, 512, wire.DONE), wire.offsetHole(fourth.handle, 1536, 512, wire.DONE)]));
    expect((await Promise.all(reads)).map((b) => b.length)).toEqual([512, 512, 512, 512]);
  });

  test('extents: one context, joined and clipped, across several block status requests', async () => {
    const contexts = ['base:allocation'];
    const { client, connection } = await fx.connect({ size: 64 * 1024, contexts }, { metaContexts: contexts });
    const seen = (async () => {
      const out = [];
      for await (const e of client.extents({ offset: 100, length: 40_000 })) out.push(e);
      return out;
    })();
    const first = await connection.request();
    expect([first.type, first.offset, first.length]).toEqual([7, 100, 40_000]);
    // The server answers for less than asked: the client asks again from where it stopped.
    await connection.send(wire.blockStatus(first.handle, 1, [[924, 0], [3072, 0]]));
    const second = await connection.request();
    expect([second.offset, second.length]).toEqual([4096, 36_004]);
    await connection.send(wire.blockStatus(second.handle, 1, [[4096, 0], [60_000, ExtentFlag.HOLE | ExtentFlag.ZERO]]));
    expect(await seen).toEqual([
      { offset: 100, length: 8092, flags: 0 },
      { offset: 8192, length: 31_908, flags: 3 },
    ]);
  });

  test('ESHUTDOWN fails the request and the client disconnects softly', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 512);
    const request = await connection.request();
    await connection.send(wire.errorChunk(request.handle, 108, 'shutting down'));
    expect(await rejectionOf(read)).toMatchObject({ code: 'ESHUTDOWN' });
    expect((await connection.request()).type).toBe(2); // NBD_CMD_DISC
    connection.socket.end();
    expect(await client.closed).toBeUndefined();
  });

  test('disconnect waits for requests in flight, then sends NBD_CMD_DISC', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 512);
    const request = await connection.request();
    const disconnecting = client.disconnect();
    expect(client.state).toBe('closing');
    expect(NbdConnectionError.isInstance(await rejectionOf(client.read(0, 1)))).toBe(true);
    await connection.send(wire.offsetHole(request.handle, 0, 512, wire.DONE));
    expect((await read).length).toBe(512);
    const disc = await connection.request();
    expect([disc.type, disc.offset, disc.length]).toEqual([2, 0, 0]);
    connection.socket.end();
    await disconnecting;
    expect(await client.closed).toBeUndefined();
    expect(client.state).toBe('closed');
  });

  test('close fails pending requests at once and ignores replies still on the way', async () => {
    const { client, connection } = await fx.connect(EXPORT);
    const read = client.read(0, 512);
    const request = await connection.request();
    const closing = client.close();
    const error = await rejectionOf(read);
    expect(NbdConnectionError.isInstance(error)).toBe(true);
    expect((error as Error).message).toMatch(/closed by the client/);
    await connection.send(wire.offsetHole(request.handle, 0, 512, wire.DONE)).catch(() => undefined);
    connection.socket.end();
    await closing;
    expect(await client.closed).toBeUndefined();
  });
});
